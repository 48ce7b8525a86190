"""The query endpoint (ClickHouse's HTTP interface on the embedded store), with real clients.

chDB hosts one store per process and this test process may own the session store, so everything
runs in subprocesses: one prepares a store (the real tables, a few hundred rows of every column type
we use) and records the answers chDB itself gives (each format's bytes, clickhouse-connect's values
over chdb://, a fingerprint of every table); `python -m cxledger.query_endpoint` then serves that
store for the whole module. clickhouse-connect over HTTP, raw HTTP (urllib) and the official
JavaScript client must get exactly the answers chDB gave, and every write or escape must be refused
with ClickHouse's error while the store stays as it was.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from cxledger.localstack import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "reader", "s3cret-Ü:pw"

# name -> SELECT; run in every format of FORMATS, over HTTP and directly on chDB.
RAW_QUERIES = {
    "ledger": "SELECT event_id, event_type, occurred_at, customer_id, channel, city, agent_id, correlation_id, "
              "payload, schema_id, kafka_partition, kafka_offset, ingested_at FROM ledger_events "
              "ORDER BY kafka_partition, kafka_offset",
    "proposals": "SELECT event_id, proposal_id, customer_id, city, from_tier, to_tier, basis, requires_approval, "
                 "occurred_at FROM tier_proposals ORDER BY proposal_id",
    "churn": "SELECT event_id, customer_id, city, tier, score, level, reasons, occurred_at "
             "FROM churn_risk_changes ORDER BY event_id",
    "scores": "SELECT event_id, survey_id, subject_id, city, composite, nps, occurred_at "
              "FROM satisfaction_scores ORDER BY event_id",
}
FORMATS = ["Native", "RowBinaryWithNamesAndTypes", "JSON", "JSONEachRow", "JSONCompact",
           "TabSeparatedWithNamesAndTypes", "CSVWithNames", "Arrow", "Parquet"]
CONTENT_TYPES = {
    "Native": "application/octet-stream", "RowBinaryWithNamesAndTypes": "application/octet-stream",
    "Arrow": "application/octet-stream", "Parquet": "application/octet-stream",
    "JSON": "application/json; charset=UTF-8", "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "TabSeparatedWithNamesAndTypes": "text/tab-separated-values; charset=UTF-8",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
}
MANY_IDS = [f"c-{n:06d}" for n in range(0, 3000, 2)]  # bound parameters this long go as multipart form
# name -> (query with server-side bound parameters, parameters) for clickhouse-connect.
CONNECT_QUERIES = {
    "by_city": ("SELECT event_id, occurred_at, customer_id, city, agent_id, correlation_id, payload, kafka_offset "
                "FROM ledger_events WHERE city = {city:String} ORDER BY kafka_partition, kafka_offset",
                {"city": "lanzhou"}),
    "since": ("SELECT event_type, count() AS n, max(occurred_at) AS last FROM ledger "
              "WHERE occurred_at >= {since:DateTime64(3, 'UTC')} GROUP BY event_type ORDER BY event_type",
              {"since": datetime(2025, 3, 5, 12, tzinfo=timezone.utc)}),
    "proposals": ("SELECT * FROM tier_proposals WHERE basis > {min:Decimal(14, 2)} ORDER BY proposal_id",
                  {"min": Decimal("50.00")}),
    "churn": ("SELECT * FROM churn_risk_changes WHERE has(reasons, {reason:String}) ORDER BY event_id",
              {"reason": "complaints"}),
    "scores": ("SELECT * FROM satisfaction_scores ORDER BY event_id", {}),
    "many_ids": ("SELECT customer_id, count() AS n FROM ledger_events WHERE customer_id IN {ids:Array(String)} "
                 "GROUP BY customer_id ORDER BY customer_id", {"ids": MANY_IDS}),
}
# What tests/js/query.mjs asks, with the parameter values it binds.
JS_QUERIES = {
    "cities": ("SELECT city, count() AS events, min(occurred_at) AS first FROM ledger_events "
               "WHERE channel = {channel:String} GROUP BY city ORDER BY city", {"channel": "phone"}),
    "proposals": ("SELECT proposal_id, basis, requires_approval, event_id FROM tier_proposals "
                  "WHERE basis >= {min:Decimal(14, 2)} ORDER BY proposal_id LIMIT 20", {"min": "100.00"}),
}
TABLES = ["ledger_events", "deadletter_events", "satisfaction_scores", "satisfaction_window_partials",
          "complaint_sla_breaches", "complaint_state", "churn_risk_changes", "tier_proposals", "tier_changes"]
# Every table's rows and the list of tables and views: equal before and after means nothing changed.
FINGERPRINT = "SELECT * FROM (" + " UNION ALL ".join(
    [f"SELECT '{t}' AS t, count() AS n, groupBitXor(cityHash64(*)) AS h FROM {t}" for t in TABLES]
    + ["SELECT 'tables', count(), groupBitXor(cityHash64(name, engine)) FROM system.tables "
       "WHERE database = currentDatabase()"]) + ") ORDER BY t FORMAT TabSeparated"

PREPARE = r'''
import base64, json, os, pickle, random, sys, uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
import chdb
from sinks.clickhouse import connect, create_tables

store, spec_file, out_file = sys.argv[1:4]
spec = pickle.loads(open(spec_file, "rb").read())
client = connect(f"chdb://{store}")
create_tables(client)
rng = random.Random(20251130)
utc = timezone.utc
base = datetime(2025, 3, 1, tzinfo=utc)
cities = ["lanzhou", "xining", "yinchuan", "lhasa", "kashgar"]
channels = ["phone", "app", "web", "store"]
odd = ["o'hara\ttab", "line1\nline2", "back\\slash", "中文 ü €", "", None]
def uid():
    return uuid.UUID(int=rng.getrandbits(128))
def when(i):
    return base + timedelta(minutes=37 * i, milliseconds=rng.randrange(1000))
ledger = []
for i in range(300):
    ledger.append([uid(), rng.choice(["contact.handled", "complaint.filed", "survey.answered", "bill.issued"]),
                   when(i), f"c-{rng.randrange(60):06d}", rng.choice(channels), rng.choice(cities),
                   rng.choice(odd + ["a-17", "a-23"]), rng.choice([None, str(uid())]),
                   json.dumps({"i": i, "note": rng.choice(["ok", "tab\there", "quote\"d", "ü"])}),
                   rng.choice([1, 2, 7]), i % 6, i // 6, base + timedelta(days=40, milliseconds=i)])
client.insert("ledger_events", ledger, column_names=[
    "event_id", "event_type", "occurred_at", "customer_id", "channel", "city", "agent_id", "correlation_id",
    "payload", "schema_id", "kafka_partition", "kafka_offset", "ingested_at"])
proposals = [[uid(), f"tp-{i:04d}", f"c-{rng.randrange(60):06d}", rng.choice(cities),
              rng.choice(["silver", "gold"]), rng.choice(["gold", "platinum", "silver"]),
              Decimal(rng.randrange(0, 99999999)) / 100, rng.random() < 0.4, when(i), "2025.1"] for i in range(120)]
client.insert("tier_proposals", proposals, column_names=[
    "event_id", "proposal_id", "customer_id", "city", "from_tier", "to_tier", "basis", "requires_approval",
    "occurred_at", "rules_version"])
churn = [[uid(), f"c-{rng.randrange(60):06d}", rng.choice(cities), rng.choice(["silver", "gold"]),
          rng.random() * 100, rng.choice(["low", "medium", "high"]), rng.choice(["low", "medium"]),
          rng.sample(["complaints", "silence", "downgrade", "bill shock", "o'quote"], rng.randrange(0, 4)),
          when(i), "2025.1"] for i in range(150)]
client.insert("churn_risk_changes", churn, column_names=[
    "event_id", "customer_id", "city", "tier", "score", "level", "previous_level", "reasons", "occurred_at",
    "rules_version"])
scores = [[uid(), f"s-{i:04d}", rng.choice([None, f"agent-{i % 7}"]), f"c-{rng.randrange(60):06d}",
           rng.choice(cities), rng.choice(channels), "gold", when(i),
           rng.choice([None, round(rng.random() * 100, 3)]), None, rng.random(), None, 0.5,
           rng.choice([None, rng.randrange(11)]), "default", "2025.1"] for i in range(100)]
client.insert("satisfaction_scores", scores, column_names=[
    "event_id", "survey_id", "subject_id", "customer_id", "city", "channel", "tier", "occurred_at", "composite",
    "response_speed", "resolution_efficiency", "attitude", "follow_up", "nps", "weights_profile",
    "rules_version"])

conn = chdb.connect(os.path.realpath(store))
def raw(sql, fmt, params=None):
    return conn.query(sql, fmt, params=params or {}).bytes()
out = {"raw": {}, "connect": {}, "js": {}}
for name, sql in spec["raw"].items():
    for fmt in spec["formats"]:
        out["raw"][name, fmt] = raw(sql, fmt)
for name, (sql, params) in spec["connect"].items():
    out["connect"][name] = {"rows": client.query(sql, parameters=params).result_rows,
                            "df": client.query_df(sql, parameters=params),
                            "arrow": client.query_arrow(sql, parameters=params)}
for name, (sql, params) in spec["js"].items():
    out["js"][name] = [json.loads(line) for line in raw(sql, "JSONEachRow", params).decode().splitlines()]
out["fingerprint"] = raw(spec["fingerprint"], "TabSeparated")
out["codes"] = dict((name, int(code)) for code, name in (line.split("\t") for line in raw(
    "SELECT number, errorCodeToName(number) FROM numbers(2000) WHERE errorCodeToName(number) != ''",
    "TabSeparatedRaw").decode().splitlines()))
out["timezone"] = raw("SELECT timezone()", "TabSeparatedRaw").decode().strip()
open(out_file, "wb").write(pickle.dumps(out))
'''

# The supervisor's case: the endpoint inside a process whose client inserts into the same store.
EMBEDDED = r'''
import base64, json, sys, threading, time, urllib.error, urllib.request
from sinks.clickhouse import connect, create_tables
from cxledger.query_endpoint import QueryEndpoint, QueryEndpointError

store = sys.argv[1]
client = connect(f"chdb://{store}")
create_tables(client, files=("ledger.sql",))
endpoint = QueryEndpoint(store, {"reader": "pw"}, port=0, max_execution_time=2)
endpoint.start()
def ask(sql):
    request = urllib.request.Request(f"http://127.0.0.1:{endpoint.port}/", data=sql.encode(),
                                     headers={"Authorization": "Basic " + base64.b64encode(b"reader:pw").decode()})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
out, long = {}, {}
started = time.monotonic()
thread = threading.Thread(target=lambda: long.update(answer=ask("SELECT count() FROM system.numbers")))
thread.start()
time.sleep(0.3)
t0 = time.monotonic()
client.insert("deadletter_events", [["t", 0, i, "r", None, "00"] for i in range(100)],
              column_names=["source_topic", "source_partition", "source_offset", "reason", "key", "value_hex"])
out["insert_seconds"] = time.monotonic() - t0
out["seen"] = ask("SELECT count() FROM deadletter_events")
thread.join()
out["long"], out["long_seconds"] = long["answer"], time.monotonic() - started
try:
    QueryEndpoint(store, {"reader": "pw"}, port=endpoint.port).start()
    out["second"] = "started"
except QueryEndpointError as exc:
    out["second"] = str(exc)
out["stats"] = [endpoint.stats.queries, endpoint.stats.errors, endpoint.stats.last_query_at is not None]
endpoint.stop()
out["after_stop"] = client.query("SELECT count() FROM deadletter_events").result_rows[0][0]
print(json.dumps(out))
'''


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class Served:
    url: str
    port: int
    expected: dict
    log: Path


def run_python(script: str, *args, timeout: float = 120) -> str:
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"helper failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def basic(user: str = USER, password: str = PASSWORD) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def call(url: str, sql: str | None = None, *, params: dict | None = None, body: bytes | None = None,
         headers: dict | None = None, auth: bool = True, method: str | None = None, path: str = "/") -> Reply:
    query = urllib.parse.urlencode(params or {}, quote_via=urllib.parse.quote)
    data = body if body is not None else (sql.encode() if sql is not None else None)
    request = urllib.request.Request(url + path + ("?" + query if query else ""), data=data, method=method,
                                     headers={**(basic() if auth else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, response.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def start_server(store: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "cxledger.query_endpoint", "--store", str(store), "--port", str(port),
             "--user", USER, "--password", PASSWORD, *extra],
            cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
            env={**os.environ, "CXLEDGER_LOG_LEVEL": "warning"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the query endpoint exited with {process.returncode}:\n{log.read_text()}")
        try:
            if call(url, path="/ping", auth=False).text == "Ok.\n":
                return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    pytest.fail(f"the query endpoint did not answer /ping in 60 s:\n{log.read_text()}")


def stop_server(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("query_endpoint")
    store = work / "store"
    store.mkdir()
    spec = work / "spec.pickle"
    spec.write_bytes(pickle.dumps({"raw": RAW_QUERIES, "formats": FORMATS, "connect": CONNECT_QUERIES,
                                   "js": JS_QUERIES, "fingerprint": FINGERPRINT}))
    run_python(PREPARE, store, spec, work / "expected.pickle")
    expected = pickle.loads((work / "expected.pickle").read_bytes())
    process, url = start_server(store, work / "server.log")
    yield Served(url, int(url.rsplit(":", 1)[1]), expected, work / "server.log")
    assert stop_server(process) == 0, (work / "server.log").read_text()


def code(served: Served, name: str) -> int:
    return served.expected["codes"][name]


def assert_error(served: Served, reply: Reply, status: int, name: str) -> None:
    number = code(served, name)
    assert (reply.status, reply.headers.get("x-clickhouse-exception-code")) == (status, str(number)), reply
    assert re.fullmatch(rf"Code: {number}\. DB::Exception: .+\. \({name}\) \(version \d+\.\d+\.\d+\.\d+\)\n",
                        reply.text, re.S), reply.text


def without_statistics(document: bytes) -> dict:
    parsed = json.loads(document)
    parsed.pop("statistics")
    return parsed


# -- clickhouse-connect over HTTP ---------------------------------------------------------------

@pytest.fixture(scope="module")
def connect_client(served):
    import clickhouse_connect

    client = clickhouse_connect.get_client(host="127.0.0.1", port=served.port, username=USER,
                                           password=PASSWORD, compress=True)
    yield client
    client.close()


def test_clickhouse_connect_gets_chdb_values(served, connect_client):
    for name, (sql, params) in CONNECT_QUERIES.items():
        expected = served.expected["connect"][name]
        result = connect_client.query(sql, parameters=params)
        assert result.result_rows == expected["rows"], name
        assert len(result.result_rows) > 0, name
        assert int(result.summary["result_rows"]) == len(expected["rows"]), name


def test_clickhouse_connect_dataframes_and_arrow(served, connect_client):
    import pandas.testing

    for name, (sql, params) in CONNECT_QUERIES.items():
        expected = served.expected["connect"][name]
        pandas.testing.assert_frame_equal(connect_client.query_df(sql, parameters=params), expected["df"])
        assert connect_client.query_arrow(sql, parameters=params).equals(expected["arrow"]), name


def test_clickhouse_connect_raw_query_formats(served, connect_client):
    for fmt in ("Native", "RowBinaryWithNamesAndTypes", "TabSeparatedWithNamesAndTypes", "CSVWithNames",
                "JSONEachRow", "Arrow"):
        for name, sql in RAW_QUERIES.items():
            assert connect_client.raw_query(sql, fmt=fmt) == served.expected["raw"][name, fmt], (name, fmt)


def test_clickhouse_connect_sees_readonly_errors(served, connect_client):
    from clickhouse_connect.driver.exceptions import DatabaseError

    with pytest.raises(DatabaseError, match=r"Code: 164\..*\(READONLY\)"):
        connect_client.command("INSERT INTO ledger_events (customer_id) VALUES ('x')")
    with pytest.raises(DatabaseError, match=r"\(UNKNOWN_TABLE\)"):
        connect_client.query("SELECT * FROM no_such_table")


def test_responses_are_compressed_as_clickhouse_chooses(served):
    import lz4.frame
    from backports import zstd
    from clickhouse_connect.driver.compression import available_compression

    sql = RAW_QUERIES["ledger"] + " FORMAT Native"
    plain = served.expected["raw"]["ledger", "Native"]
    offered = ",".join(available_compression)  # what clickhouse-connect sends with compress=True
    reply = call(served.url, sql, headers={"Accept-Encoding": offered})
    assert reply.headers["content-encoding"] == "zstd"  # ClickHouse prefers zstd, then br, lz4, gzip
    assert zstd.decompress(reply.body) == plain and len(reply.body) < len(plain)
    decoders = {"gzip": gzip.decompress, "deflate": zlib.decompress, "lz4": lz4.frame.decompress,
                "zstd": zstd.decompress}
    for offer, chosen in [("gzip", "gzip"), ("gzip, deflate", "gzip"), ("deflate", "deflate"),
                          ("gzip,lz4", "lz4"), ("zstd;q=0.1, gzip", "zstd")]:
        reply = call(served.url, sql, headers={"Accept-Encoding": offer})
        assert reply.headers["content-encoding"] == chosen, offer
        assert decoders[chosen](reply.body) == plain, offer
    for offer, params in [("identity", {}), ("gzip", {"enable_http_compression": "0"})]:
        reply = call(served.url, sql, params=params, headers={"Accept-Encoding": offer})
        assert "content-encoding" not in reply.headers and reply.body == plain
    # Request bodies may come compressed too.
    for encoding, pack in [("gzip", gzip.compress), ("deflate", zlib.compress), ("zstd", zstd.compress),
                           ("lz4", lz4.frame.compress)]:
        reply = call(served.url, body=pack(sql.encode()), headers={"Content-Encoding": encoding})
        assert reply.body == plain, encoding


# -- raw HTTP -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_is_chdb_s_own_output(served, fmt):
    for name, sql in RAW_QUERIES.items():
        expected = served.expected["raw"][name, fmt]
        for reply in (call(served.url, sql, params={"default_format": fmt}),
                      call(served.url, f"{sql} FORMAT {fmt}")):
            assert reply.status == 200, reply.text
            assert reply.headers["x-clickhouse-format"] == fmt
            assert reply.headers["content-type"] == CONTENT_TYPES[fmt]
            if fmt in ("JSON", "JSONCompact"):  # the statistics block holds the elapsed time
                assert without_statistics(reply.body) == without_statistics(expected), (name, fmt)
            else:
                assert reply.body == expected, (name, fmt)


def test_query_in_url_body_or_both(served):
    sql = RAW_QUERIES["proposals"]
    expected = served.expected["raw"]["proposals", "TabSeparatedWithNamesAndTypes"]
    fmt = {"default_format": "TabSeparatedWithNamesAndTypes"}
    assert call(served.url, params={"query": sql, **fmt}).body == expected  # GET
    assert call(served.url, sql, params=fmt).body == expected  # POST body
    head, tail = sql.split(" ORDER BY ")
    assert call(served.url, "ORDER BY " + tail, params={"query": head, **fmt}).body == expected  # both


def test_database_parameters_settings_and_headers(served):
    assert call(served.url, "SELECT count() FROM one", params={"database": "system"}).text == "1\n"
    assert call(served.url, "SELECT count() FROM one", headers={"X-ClickHouse-Database": "system"}).text == "1\n"
    assert_error(served, call(served.url, "SELECT 1", params={"database": "nope"}), 404, "UNKNOWN_DATABASE")
    # Parameter values come in ClickHouse's escaped text form, as the HTTP interface takes them.
    reply = call(served.url, "SELECT {n:UInt32} + 1, {s:String}, {a:Array(String)}",
                 params={"param_n": "41", "param_s": "tab\\there", "param_a": "['o\\'hara','x']"})
    assert reply.text == "42\ttab\\there\t['o\\'hara','x']\n"
    tricky = "SELECT 'tab\there', 'new\nline', 'back\\\\slash', 'ü中文', '\\0' FORMAT JSONCompactEachRow"
    assert json.loads(call(served.url, tricky).body) == ["tab\there", "new\nline", "back\\slash", "ü中文", "\0"]
    # Settings in the URL apply to the query.
    many = "SELECT number FROM numbers(10)"
    assert_error(served, call(served.url, many, params={"max_result_rows": "5"}), 500, "TOO_MANY_ROWS_OR_BYTES")
    assert call(served.url, many, params={"max_result_rows": "5", "result_overflow_mode": "break"}).status == 200
    assert_error(served, call(served.url, many, params={"no_such_setting": "1"}), 404, "UNKNOWN_SETTING")
    reply = call(served.url, "SELECT toDateTime('2025-03-01 00:00:00', 'UTC') AS t FORMAT JSONEachRow",
                 params={"query_id": "q-42", "session_timezone": "Asia/Shanghai",
                         "date_time_output_format": "iso"})
    assert reply.text == '{"t":"2025-03-01T00:00:00Z"}\n'
    assert reply.headers["x-clickhouse-query-id"] == "q-42"
    assert reply.headers["x-clickhouse-timezone"] == "Asia/Shanghai"
    assert reply.headers["x-clickhouse-server-display-name"]
    reply = call(served.url, RAW_QUERIES["churn"])
    assert reply.headers["x-clickhouse-timezone"] == served.expected["timezone"]
    assert re.fullmatch(r"[0-9a-f-]{36}", reply.headers["x-clickhouse-query-id"])
    summary = json.loads(reply.headers["x-clickhouse-summary"])
    assert all(isinstance(v, str) for v in summary.values())
    assert summary["result_rows"] == summary["read_rows"] == "150" and int(summary["elapsed_ns"]) > 0
    assert reply.headers["keep-alive"].startswith("timeout=")


def test_authentication(served):
    reply = call(served.url, "SELECT 1", auth=False)
    assert_error(served, reply, 401, "REQUIRED_PASSWORD")
    assert reply.headers["www-authenticate"].startswith("Basic")
    for attempt in [{"headers": basic(password="wrong")}, {"headers": basic(user="nobody")},
                    {"params": {"user": USER, "password": "wrong"}},
                    {"headers": {"X-ClickHouse-User": USER, "X-ClickHouse-Key": "wrong"}}]:
        reply = call(served.url, "SELECT 1", auth=False, **attempt)
        assert_error(served, reply, 403, "AUTHENTICATION_FAILED")
        assert "Authentication failed: password is incorrect, or there is no user with such name" in reply.text
    for good in [{"params": {"user": USER, "password": PASSWORD}},
                 {"headers": {"X-ClickHouse-User": USER, "X-ClickHouse-Key": PASSWORD}}]:
        assert call(served.url, "SELECT 1", auth=False, **good).text == "1\n"
    assert PASSWORD not in served.log.read_text()


def test_errors_are_clickhouse_s(served):
    reply = call(served.url, "SELECT * FROM no_such_table")
    assert_error(served, reply, 404, "UNKNOWN_TABLE")
    reply = call(served.url, "SELEC 1")
    assert_error(served, reply, 400, "SYNTAX_ERROR")
    assert "failed at position 7" in reply.text  # positions in the client's own text
    assert "formatQuerySingleLine" not in reply.text
    assert_error(served, call(served.url, ""), 400, "SYNTAX_ERROR")
    assert_error(served, call(served.url, "SELECT 1", params={"compress": "1"}), 501, "NOT_IMPLEMENTED")
    assert_error(served, call(served.url, "SELECT 1", params={"default_format": "DataFrame"}), 404,
                 "UNKNOWN_FORMAT")


def test_ping_and_root(served):
    assert call(served.url, path="/ping", auth=False).text == "Ok.\n"
    assert call(served.url, path="/", auth=False, method="GET").text == "Ok.\n"


@pytest.fixture
def listener():
    """A TCP port that records whether anything connected to it (a server-side request escaping)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(0.2)
    hits, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                hits.append(1)
                conn.close()
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1], hits
    stop.set()
    thread.join()
    sock.close()


def test_writes_and_escapes_are_refused(served, tmp_path, listener):
    port, hits = listener
    outfile = tmp_path / "escaped.txt"
    before = call(served.url, FINGERPRINT)
    assert before.body == served.expected["fingerprint"]
    readonly = [
        "INSERT INTO ledger_events (customer_id) VALUES ('x')",
        "INSERT INTO deadletter_events FORMAT CSV\n\"t\",0,1,\"r\",\\N,\"00\",\"2025-01-01 00:00:00\"\n",
        "CREATE TABLE evil (a UInt8) ENGINE = Memory",
        "DROP TABLE ledger_events",
        "ALTER TABLE ledger_events DELETE WHERE 1",
        "TRUNCATE TABLE tier_proposals",
        "OPTIMIZE TABLE ledger_events FINAL",
        "SYSTEM STOP MERGES",
        "KILL QUERY WHERE 1",
        "GRANT SELECT ON *.* TO default",
        "SET max_execution_time = 1000",
        f"SELECT 1 INTO OUTFILE '{outfile}'",
        f"EXPLAIN ANALYZE SELECT 1 INTO OUTFILE '{outfile}'",
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
        "SELECT file('/etc/hostname')",
        "SELECT `file`('/etc/hostname')",
        f"DESCRIBE url('http://127.0.0.1:{port}/x.csv')",
        f"SELECT * FROM url('http://127.0.0.1:{port}/x.csv', CSV, 'a String')",
        "SELECT * FROM eval('SELECT 1')",
        "SELECT count() FROM system.numbers SETTINGS max_execution_time = 100000",
        "BACKUP TABLE ledger_events TO Disk('default', 'b.zip')",
        "SELECT 1 PARALLEL WITH KILL QUERY WHERE 1",
    ]
    for sql in readonly:
        assert_error(served, call(served.url, sql), 500, "READONLY")
    for setting, value in [("additional_result_filter", "length(file('/etc/hostname')) > 0"),
                           ("dialect", "prql"), ("format_avro_schema_registry_url", f"http://127.0.0.1:{port}"),
                           ("allow_experimental_eval_table_function", "1")]:
        reply = call(served.url, "SELECT 1", params={setting: value})
        assert_error(served, reply, 500, "READONLY")
        assert f"Cannot modify '{setting}' setting in readonly mode" in reply.text
    for sql in ["SELECT 1; KILL QUERY WHERE 1", "SELECT 1; INSERT INTO ledger_events (customer_id) VALUES ('x')",
                "EXPLAIN AST SELECT 1; SELECT 2"]:
        reply = call(served.url, sql)
        assert_error(served, reply, 400, "SYNTAX_ERROR")
        assert "Multi-statements are not allowed" in reply.text
    # A readonly URL parameter changes nothing; reading still works.
    assert call(served.url, "SELECT 1", params={"readonly": "0"}).text == "1\n"
    assert call(served.url, "DESCRIBE TABLE tier_proposals").status == 200
    assert call(served.url, FINGERPRINT).body == before.body
    assert not outfile.exists() and hits == []


def test_max_execution_time_from_the_url(served):
    started = time.monotonic()
    reply = call(served.url, "SELECT count() FROM system.numbers", params={"max_execution_time": "1"})
    assert_error(served, reply, 408, "TIMEOUT_EXCEEDED")
    assert 0.9 < time.monotonic() - started < 10


def test_a_short_lived_server_caps_time_and_concurrency(served, tmp_path):
    store = tmp_path / "empty"
    store.mkdir()
    process, url = start_server(store, tmp_path / "server.log", "--max-execution-time", "1",
                                "--max-concurrent-queries", "1")
    try:
        long: dict = {}
        thread = threading.Thread(target=lambda: long.update(reply=call(
            url, "SELECT count() FROM system.numbers", params={"max_execution_time": "1000"})))
        started = time.monotonic()
        thread.start()
        time.sleep(0.5)  # the long query holds the one slot for a second
        assert_error(served, call(url, "SELECT 1"), 500, "TOO_MANY_SIMULTANEOUS_QUERIES")
        thread.join()
        assert_error(served, long["reply"], 408, "TIMEOUT_EXCEEDED")  # a client cannot raise the limit
        assert 0.9 < time.monotonic() - started < 10
        assert call(url, "SELECT 1").text == "1\n"
    finally:
        assert stop_server(process) == 0


def test_embedded_next_to_an_inserting_client(tmp_path):
    out = json.loads(run_python(EMBEDDED, tmp_path / "store").splitlines()[-1])
    assert out["insert_seconds"] < 1.0, out  # inserts are not held up by a running query
    assert out["seen"] == [200, "100\n"]
    assert out["long"][0] == 408 and "TIMEOUT_EXCEEDED" in out["long"][1]
    assert out["long_seconds"] > 1.5
    assert "cannot listen on 127.0.0.1" in out["second"] and "choose another port" in out["second"]
    assert out["stats"] == [2, 1, True]
    assert out["after_stop"] == 100


# -- the official JavaScript client ---------------------------------------------------------------

def javascript_client(url: str, user: str, password: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run tests/js/query.mjs (@clickhouse/client) against ``url``; skip when npm cannot
    install the client here."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if not (npm and node):
        pytest.skip("node and npm are needed for @clickhouse/client")
    work = tmp_path / "js"
    shutil.copytree(ROOT / "tests" / "js", work, ignore=shutil.ignore_patterns("node_modules"))
    try:
        installed = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefer-offline",
                                    "--fetch-retries=1", "--fetch-retry-mintimeout=1000", "--fetch-retry-maxtimeout=5000"], cwd=work,
                                   capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("npm install of @clickhouse/client took over 120 s")
    if installed.returncode != 0:
        pytest.skip(f"npm could not install @clickhouse/client: {installed.stderr.strip()[-500:]}")
    return subprocess.run([node, "query.mjs", url, user, password], cwd=work, capture_output=True,
                          text=True, timeout=60)


def test_javascript_client(served, tmp_path):
    ran = javascript_client(served.url, USER, PASSWORD, tmp_path)
    assert ran.returncode == 0, ran.stderr
    out = json.loads(ran.stdout)
    assert out["ping"] == {"success": True}
    assert out["cities"] == served.expected["js"]["cities"] and out["cities"]
    assert out["proposals"] == served.expected["js"]["proposals"] and out["proposals"]
    assert out["insert"]["refused"] and out["insert"]["code"] == str(code(served, "READONLY"))
    assert out["insert"]["type"] == "READONLY"
    assert out["kill"] == {"refused": True, "code": str(code(served, "READONLY")), "type": "READONLY"}
