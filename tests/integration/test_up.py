"""``cxledger up`` as its users run it: a service on one machine that channels publish to,
ops query while events flow, and that stops and starts again without losing or doubling
anything. Every stack here is a real process tree (broker, workers, gateway) on a store of its
own; the commands find it through the stack record, as they would in a user's directory."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from producers.simulator import simulate
from tests.integration.test_query_endpoint import javascript_client
from tests.stack_driver import (DERIVED, READY, Up, clean_env, cli, csv_rows, descendants,
                                final_rows, free_port, port_free, read_record, wait_gone,
                                write_jsonl)

pytestmark = pytest.mark.integration

def http(url: str, data: bytes | None = None, headers: dict | None = None,
         method: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def chdb_output(store: Path, queries: list[tuple[str, str]]) -> list[bytes]:
    """The same queries run directly on chDB over ``store`` (in a process of their own: this
    one may hold another store)."""
    script = ("import chdb, json, sys\n"
              "conn = chdb.connect(sys.argv[1])\n"
              "for sql, fmt in json.loads(sys.stdin.read()):\n"
              "    sys.stdout.write(conn.query(sql, fmt).bytes().hex() + '\\n')\n")
    ran = subprocess.run([sys.executable, "-c", script, str(store)], input=json.dumps(queries),
                         capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    return [bytes.fromhex(line) for line in ran.stdout.splitlines()]


RAW_QUERIES = [  # (query, format) asked over HTTP while the stack runs, then of chDB directly
    ("SELECT event_type, count() AS n FROM ledger GROUP BY event_type ORDER BY event_type",
     "JSONEachRow"),
    ("SELECT city, uniqExact(customer_id) AS customers FROM ledger GROUP BY city ORDER BY city",
     "CSVWithNames"),
    ("SELECT event_id, occurred_at, kafka_partition, kafka_offset FROM ledger "
     "ORDER BY kafka_partition, kafka_offset LIMIT 200", "TabSeparatedWithNamesAndTypes"),
    ("SELECT event_id, city, occurred_at FROM ledger ORDER BY event_id LIMIT 300", "Parquet"),
]


def test_a_detached_stack_serves_publishers_and_readers_until_down(tmp_path):
    """up --detach; the commands of the same directory find it; acknowledged means stored;
    three ways in (file, SDK, gateway) and three ways out (sql, clickhouse-connect, customer);
    a second up refuses; replay through the stack equals live; down leaves nothing."""
    import clickhouse_connect

    from cxledger.config import load_settings
    from cxledger.stack import attach, find_stack
    from producers.sdk import LedgerProducer

    env = clean_env(CXLEDGER_QUERY_PORT=str(free_port()),
                    CXLEDGER_GATEWAY_PORT=str(free_port()))
    started = cli("up", "--detach", cwd=tmp_path, env=env, timeout=READY + 30)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "password" in started.stdout
    store = tmp_path / ".cxledger" / "store"
    record = read_record(store)
    assert (store / "stack.json").stat().st_mode & 0o777 == 0o600
    assert record["query"]["password"] in started.stdout  # generated, printed, kept
    up_pid = record["pid"]
    try:
        again = cli("up", cwd=tmp_path, env=env, timeout=60)
        assert again.returncode == 1
        assert "already running" in again.stderr and "cxledger down" in again.stderr

        status = cli("status", cwd=tmp_path, env=env)
        assert status.returncode == 0 and "query endpoint" in status.stdout, status.stdout
        metrics_url = wait_for_metrics_url(store)

        events = list(simulate(1500, seed=3))
        published = cli("publish", str(write_jsonl(tmp_path / "traffic.jsonl", events)),
                        cwd=tmp_path, env=env)
        assert published.returncode == 0, published.stderr
        assert "1500 published" in published.stdout
        # acknowledged means stored: visible at once, no waiting
        count = cli("sql", "SELECT count() FROM ledger", "--format", "csv", cwd=tmp_path, env=env)
        assert csv_rows(count) == ["1500"]

        # the SDK, attached to the running stack
        settings = attach(load_settings(environ={}).with_(store=store), find_stack(store))
        assert settings.acks_wait_for_store
        sdk_event = {**{k: v for k, v in events[0].items() if k != "event_id"},
                     "customer_id": "c-sdk-1"}
        with LedgerProducer(settings) as producer:
            sdk_id = producer.publish(sdk_event)
        seen = cli("sql", f"SELECT count() FROM ledger WHERE event_id = '{sdk_id}'",
                   "--format", "csv", cwd=tmp_path, env=env)
        assert csv_rows(seen) == ["1"]

        # the gateway: a key generated by up; 202 only once the event is in the store
        gateway_event = {**sdk_event, "customer_id": "c-gw-1"}
        gateway_url = f"http://127.0.0.1:{record['gateway']['port']}/v1/events"
        code, _ = http(gateway_url, json.dumps(gateway_event).encode(),
                       {"Content-Type": "application/json"})
        assert code == 401  # no anonymous publishing
        assert record["gateway"]["key"] in started.stdout
        code, body = http(gateway_url, json.dumps(gateway_event).encode(),
                          {"Content-Type": "application/json",
                           "Authorization": f"Bearer {record['gateway']['key']}"})
        assert code == 202, body
        gateway_id = json.loads(body)["results"][0]["event_id"]
        seen = cli("sql", f"SELECT customer_id FROM ledger WHERE event_id = '{gateway_id}'",
                   "--format", "csv", cwd=tmp_path, env=env)
        assert csv_rows(seen) == ['"c-gw-1"']

        # a real ClickHouse client on the query endpoint, with bound parameters
        client = clickhouse_connect.get_client(
            host="127.0.0.1", port=record["query"]["port"], username=record["query"]["user"],
            password=record["query"]["password"], compress=True)
        by_city = client.query("SELECT city, count() AS n FROM ledger WHERE city != {skip:String}"
                               " GROUP BY city ORDER BY city", parameters={"skip": "beijing"})
        via_sql = cli("sql", "SELECT city, count() AS n FROM ledger WHERE city != 'beijing' "
                      "GROUP BY city ORDER BY city", "--format", "csv", cwd=tmp_path, env=env)
        assert [f'"{c}",{n}' for c, n in by_city.result_rows] == csv_rows(via_sql)
        query_url = f"http://127.0.0.1:{record['query']['port']}"
        code, body = http(f"{query_url}/?user={record['query']['user']}&password="
                          f"{record['query']['password']}",
                          b"INSERT INTO ledger_events (event_id) VALUES (generateUUIDv4())")
        assert code >= 400 and b"READONLY" in body
        code, body = http(f"{query_url}/?user={record['query']['user']}&password=wrong",
                          b"SELECT 1")
        assert code == 403 and b"AUTHENTICATION_FAILED" in body
        # raw HTTP in several formats; compared with chDB itself once the stack is down
        credentials = {"Authorization": "Basic " + base64.b64encode(
            f"{record['query']['user']}:{record['query']['password']}".encode()).decode()}
        served = []
        for sql, fmt in RAW_QUERIES:
            code, body = http(f"{query_url}/?default_format={fmt}", sql.encode(), credentials)
            assert code == 200, body
            served.append(body)
        every_city = "SELECT city, count() AS n FROM ledger GROUP BY city ORDER BY city"
        arrow = client.query_arrow(every_city)
        assert [f'"{c}",{n}' for c, n in zip(arrow.column("city").to_pylist(),
                                            arrow.column("n").to_pylist())] == csv_rows(
            cli("sql", every_city, "--format", "csv", cwd=tmp_path, env=env))
        # the official JavaScript client sees what `cxledger sql` sees
        ran = javascript_client(query_url, record["query"]["user"], record["query"]["password"],
                                tmp_path)
        assert ran.returncode == 0, ran.stderr
        cities = cli("sql", "SELECT city, count() AS events, min(occurred_at) AS first FROM "
                     "ledger_events WHERE channel = 'phone' GROUP BY city ORDER BY city "
                     "FORMAT JSONEachRow", cwd=tmp_path, env=env)
        expected = [json.loads(line) for line in cities.stdout.splitlines()]
        assert expected and json.loads(ran.stdout)["cities"] == expected
        assert json.loads(ran.stdout)["insert"]["type"] == "READONLY"

        # a customer's timeline, through the stack
        customer = events[0]["customer_id"]
        report = cli("customer", customer, "--format", "json", cwd=tmp_path, env=env)
        assert report.returncode == 0, report.stderr
        doc = json.loads(report.stdout)
        assert doc["customer_id"] == customer and doc["timeline"]
        assert {"as_of", "tier", "churn_risk", "open_complaints"} <= set(doc)

        # one scrape target for the stack: the sinks, the query endpoint, each worker and the
        # gateway (child label); readiness; every log line of up and its workers is JSON
        check_stack_metrics(metrics_url, events=1502, store=store)

        # replay through the running stack equals live, once the processors caught up
        deadline = time.monotonic() + 120
        while True:
            replayed = cli("replay", cwd=tmp_path, env=env)
            if replayed.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert "replay equals live" in replayed.stdout, replayed.stdout + replayed.stderr
        processes = descendants(up_pid)
        assert len(processes) >= 3  # broker, worker, gateway
    finally:
        down = cli("down", cwd=tmp_path, env=env, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert wait_gone([up_pid, *processes]) == []
    assert cli("status", cwd=tmp_path, env=env).returncode == 3
    assert chdb_output(store, RAW_QUERIES) == served


def wait_for_metrics_url(store: Path, timeout: float = 30) -> str:
    """Where the stack serves /metrics (status.json: 127.0.0.1:9108 unless that was taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = json.loads((store / "status.json").read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("metrics"):
            return status["metrics"].removesuffix("/metrics")
        time.sleep(0.3)
    raise AssertionError("no metrics address in status.json")


def check_stack_metrics(url: str, events: int, store: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> list:
        code, body = http(f"{url}/metrics")
        assert code == 200
        return [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]

    def total(found, name, **labels) -> float:
        return sum(s.value for s in found if s.name == name
                   and all(s.labels.get(k) == v for k, v in labels.items()))

    code, body = http(f"{url}/readyz")
    assert code == 200, body
    assert json.loads(body)["checks"]["processors"]["worker-0"] == "ready"
    deadline = time.monotonic() + 60
    while True:
        found = scrape()
        folded = total(found, "cxledger_events_in_total", child="worker-0",
                       consumer="cxledger-processors")
        if folded >= events or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert folded >= events
    assert total(found, "cxledger_events_in_total", consumer="cxledger-ledger-sink") >= events
    assert total(found, "cxledger_sink_rows_written_total", table="ledger_events") >= events
    assert total(found, "cxledger_query_duration_seconds_count", outcome="ok") >= 1
    assert total(found, "cxledger_gateway_events_total", child="gateway",
                 outcome="accepted") >= 1
    assert total(found, "process_resident_memory_bytes", child="worker-0") > 0
    assert any(s.name == "cxledger_consumer_lag" and s.labels.get("child") == "worker-0"
               for s in found)
    for name in ("up.log", "worker-0.log"):
        lines = (store / "logs" / name).read_text().splitlines()
        assert lines and all(json.loads(line) for line in lines if line.strip()), name


def test_ctrl_c_then_up_again_continues_as_if_never_stopped(tmp_path):
    """A ledger published in two halves, the stack stopped with Ctrl-C and started again
    between them, derives exactly what one uninterrupted run derives from the whole. Both
    halves published again after the second (an ingest run again, events up to months old in
    event time, the first half folded before the restart) change nothing."""
    events = list(simulate(4000, seed=5))
    whole = write_jsonl(tmp_path / "whole.jsonl", events)
    first = write_jsonl(tmp_path / "first.jsonl", events[:2000])
    second = write_jsonl(tmp_path / "second.jsonl", events[2000:])
    env = clean_env()
    reference = tmp_path / "reference" / "store"
    demo = cli("demo", "--input", str(whole), "--store", str(reference), cwd=tmp_path, env=env)
    assert demo.returncode == 0, demo.stderr[-3000:]

    work = tmp_path / "service"
    work.mkdir()
    # the contract: `cd DIR && cxledger up` serves on 127.0.0.1:8123 and :8080
    defaults = port_free(8123) and port_free(8080)
    ports = {} if defaults else {"CXLEDGER_QUERY_PORT": str(free_port()),
                                 "CXLEDGER_GATEWAY_PORT": str(free_port())}
    up_env = clean_env(CXLEDGER_QUERY_USER="ops", CXLEDGER_QUERY_PASSWORD="reader-secret",
                       **ports)
    for files in ([first], [second, first, second]):
        up = Up(work, up_env)
        record = up.wait_ready()
        if defaults:
            assert (record["query"]["port"], record["gateway"]["port"]) == (8123, 8080)
        assert record["query"]["user"] == "ops"
        assert record["query"]["password"] == "reader-secret"
        children = descendants(up.proc.pid)
        for half in files:
            published = cli("publish", str(half), cwd=work, env=env)
            assert published.returncode == 0, published.stderr
        seconds = up.interrupt()
        assert seconds < 60, f"Ctrl-C took {seconds:.0f}s"
        assert wait_gone(children) == [], "Ctrl-C left processes behind"
    store = work / ".cxledger" / "store"
    assert "restored: 2,000 ledger events" in up.output()
    expected, got = final_rows(tmp_path, env, reference), final_rows(tmp_path, env, store)
    for table in DERIVED:
        assert expected[table], table
        assert got[table] == expected[table], table
    ledger = "SELECT event_id, kafka_partition, kafka_offset FROM ledger ORDER BY ALL"
    assert (csv_rows(cli("sql", "--store", str(store), "--format", "csv", ledger, cwd=tmp_path,
                         env=env))
            == csv_rows(cli("sql", "--store", str(reference), "--format", "csv", ledger,
                            cwd=tmp_path, env=env)))


def test_kill_9_of_the_whole_stack_loses_nothing_acknowledged(tmp_path):
    """SDK publishing while the whole process group is killed: every acknowledged event is
    in the store exactly once, nothing is left running, and after a restart the derived
    tables equal a fold of the stored ledger."""
    from cxledger.config import load_settings
    from cxledger.stack import attach, find_stack
    from producers.sdk import DeliveryError, LedgerProducer

    env = clean_env(CXLEDGER_QUERY_PORT=str(free_port()),
                    CXLEDGER_GATEWAY_PORT=str(free_port()))
    up = Up(tmp_path, env)
    up.wait_ready()
    store = up.store
    settings = attach(load_settings(environ={}).with_(store=store), find_stack(store))
    acknowledged: list[str] = []
    failed = threading.Event()

    def publish() -> None:
        producer = LedgerProducer(settings, producer_conf={"message.timeout.ms": 8000})
        try:
            chunk: list[str] = []
            for event in simulate(200_000, seed=8):
                chunk.append(producer.publish(event))
                if len(chunk) == 250:
                    producer.flush(15)
                    acknowledged.extend(chunk)
                    chunk = []
        except DeliveryError:
            failed.set()

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    deadline = time.monotonic() + 120
    while len(acknowledged) < 3000 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(acknowledged) >= 3000, up.output()
    children = descendants(up.proc.pid)
    up.kill()
    assert wait_gone(children, timeout=15) == [], "kill -9 left processes behind"
    publisher.join(timeout=60)
    assert failed.is_set()

    up = Up(tmp_path, env)
    up.wait_ready()
    up.interrupt()
    stored = csv_rows(cli("sql", "SELECT toString(event_id) FROM ledger", "--format", "csv",
                          cwd=tmp_path, env=env))
    ids = [row.strip('"') for row in stored]
    assert len(ids) == len(set(ids))
    assert set(acknowledged) <= set(ids), f"{len(set(acknowledged) - set(ids))} lost"
    replayed = cli("replay", cwd=tmp_path, env=env)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "replay equals live" in replayed.stdout
