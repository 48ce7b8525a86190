"""ClickHouse's HTTP interface, served by the process that owns the embedded chDB store.

One process owns a chDB directory, so Grafana, curl and every ClickHouse client (clickhouse-connect,
@clickhouse/client, clickhouse-go over HTTP) reach the store through that process: this module
answers them the way a ClickHouse server does (same URL parameters, headers, status codes and error
text), read-only. It is an HTTP front (Starlette on uvicorn) and nothing more: chDB parses, checks
and runs every query and writes every output format; the ClickHouse behaviour reproduced here is the
HTTP handler's (src/Server/HTTPHandler.cpp: query text, parameters, compression, headers, errors).

Each request gets a fresh chDB connection handle to the one engine of the process (1 ms; the
handles share the engine, so the query runs next to the sinks' inserts, without a lock), in this
order: the request's settings (``SET``), ``max_execution_time`` capped at the configured limit,
``enable_http_compression = 1``, then ``readonly = 1``, and the query. ClickHouse refuses every write
in readonly mode; the statement check below closes what an embedded engine still lets through there:
``KILL``, ``INTO OUTFILE``, ``BACKUP``/``RESTORE``, the ``file()`` function and the schema inference
of table functions (``DESCRIBE url(...)``), settings that carry SQL or switch the parser, and chDB's
multi-statement execution (the HTTP interface runs one statement). The check runs on ClickHouse's
own parse of the text (``formatQuerySingleLine`` with the text as a query parameter, never as SQL).

Run one on its own: ``python -m cxledger.query_endpoint --store DIR --port 8123 --user U --password P``.

Metrics (cxledger.metrics, served by ``cxledger up`` on its metrics port):
``cxledger_query_duration_seconds{outcome, format}`` (outcome ok | client_error | server_error,
format the output format or "other"; authentication failures count as client_error) and
``cxledger_queries_in_flight``.

TLS: with a certificate and its key (``tls_cert``/``tls_key``; ``--tls-cert``/``--tls-key``, or
CXLEDGER_QUERY_TLS_CERT/CXLEDGER_QUERY_TLS_KEY) the endpoint serves HTTPS only (TLS 1.2 or later),
as ClickHouse's ``https_port`` does: clients connect to ``https://host:port`` and check the
certificate against their CA (clickhouse-connect: ``get_client(..., secure=True,
ca_cert=CA_FILE)``; curl: ``--cacert CA_FILE``). The files are read at start: a missing file,
a key that does not match or an encrypted key stops the start with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import bz2
import contextlib
import email.parser
import email.policy
import gzip
import hmac
import json
import lzma
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
import zlib
from base64 import b64decode
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

log = structlog.get_logger("cxledger.query")

# URL parameters of the HTTP interface that are not settings (HTTPHandler.cpp's reserved names,
# plus the transport settings its handler reads itself): never SET on the connection.
HTTP_PARAMETERS = frozenset({
    "query", "database", "default_format", "query_id", "user", "password", "quota_key", "session_id",
    "session_timeout", "session_check", "close_session", "buffer_size", "wait_end_of_query",
    "compress", "decompress", "client_protocol_version", "role", "stacktrace",
    "send_progress_in_http_headers", "http_headers_progress_interval_ms", "enable_http_compression",
    "http_zlib_compression_level", "add_http_cors_header",
})

# exceptionCodeToHTTPStatus.cpp, by error name (the codes come from the engine at start).
_STATUS_BY_ERROR = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys(("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE",
                     "ACCESS_DENIED"), 403),
    **dict.fromkeys((
        "BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE",
        "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
        "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6",
        "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
        "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST",
        "TOO_BIG_AST", "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
        "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"), 400),
    **dict.fromkeys((
        "UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE",
        "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING",
        "UNKNOWN_AGGREGATE_FUNCTION", "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE",
        "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"), 404),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    **dict.fromkeys(("SOCKET_TIMEOUT", "CANNOT_OPEN_FILE", "CANNOT_SCHEDULE_TASK"), 503),
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}

# Statements a read-only endpoint runs (the leading keyword of ClickHouse's canonical text).
# Everything else (INSERT, DDL, SYSTEM, KILL, SET, GRANT, BACKUP, ...) is refused as READONLY.
_READ_STATEMENTS = frozenset({"SELECT", "WITH", "EXPLAIN", "DESCRIBE", "SHOW", "EXISTS", "CHECK", "USE"})
# Keywords refused anywhere (inside EXPLAIN or after PARALLEL WITH too). Canonical text has
# keywords in upper case and identifiers as written, so only upper-case words match.
_REFUSED_KEYWORDS = re.compile(r"\bINTO\s+OUTFILE\b|\bPARALLEL\s+WITH\b|\b(?:KILL|INSERT|BACKUP|RESTORE|UNDROP)\b")
# Functions refused by name besides the table functions that readonly mode refuses to run (whose
# schema inference, e.g. DESCRIBE url(...), readonly mode does not stop): file() reads any file in
# an embedded engine; eval() runs SQL built at run time, out of reach of the statement check.
_REFUSED_FUNCTIONS = frozenset({"file", "eval"})
# Settings a request may not change: they switch the parser (the check would not see what runs)
# or open eval(). String and Map settings are refused unless listed in _STRING_SETTINGS: several
# carry SQL (additional_result_filter) or name files (format_template_row, output_format_schema).
_REFUSED_SETTINGS = frozenset({"dialect", "implicit_select", "allow_experimental_eval_table_function",
                               "allow_experimental_kusto_dialect", "allow_experimental_prql_dialect"})
_REFUSED_SETTING_TYPES = frozenset({"String", "Map", "URI", "Dialect"})
_STRING_SETTINGS = frozenset({
    "log_comment", "count_distinct_implementation", "format_csv_null_representation",
    "format_tsv_null_representation", "bool_true_representation", "bool_false_representation",
    "output_format_pretty_grid_charset", "format_custom_field_delimiter",
    "format_custom_row_before_delimiter", "format_custom_row_after_delimiter",
    "format_custom_row_between_delimiter", "format_custom_result_before_delimiter",
    "format_custom_result_after_delimiter", "output_format_avro_codec",
    "output_format_avro_string_column_pattern", "output_format_orc_writer_time_zone_name",
    "query_cache_tag",
})
# chDB's Python wrapper turns these "formats" into Python objects instead of asking the engine.
_PYTHON_SIDE_FORMATS = frozenset({"dataframe", "arrowtable", "datastore"})

_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'|`(?:[^`\\]|\\.)*`|\"(?:[^\"\\]|\\.)*\"", re.S)
_FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+([A-Za-z_][A-Za-z0-9_]*)(?:\s+SETTINGS\b.*)?\s*$", re.S)
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ERROR = re.compile(r"^Code: (\d+)\.", re.S)
_ERROR_NAME = re.compile(r"\(([A-Z0-9_]+)\)\s*$")
_PARSER_SCOPE = re.compile(r"(?s)^(.*?):? In scope SELECT formatQuerySingleLine\(.*\)\.? \(([A-Z0-9_]+)\)\s*$")

# ClickHouse's order of preference among the methods a client accepts (chooseHTTPCompressionMethod:
# a substring match on Accept-Encoding); the ones this process cannot produce are passed over.
_COMPRESSION_PREFERENCE = ("zstd", "br", "lz4", "snappy", "gzip", "deflate", "xz", "bz2")
_LEVELS = {"zstd": (1, 22), "lz4": (1, 12)}
MAX_REQUEST_BYTES = 64 << 20
KEEP_ALIVE_SECONDS = 10


class QueryEndpointError(RuntimeError):
    """The endpoint cannot start (port taken, store in use, ...)."""


@dataclass
class QueryStats:
    """For a status line: queries answered (or refused after authentication), errors, last query."""

    queries: int = 0
    errors: int = 0
    last_query_at: datetime | None = None


class ClickHouseError(Exception):
    """An error answered the way the ClickHouse server formats it."""

    def __init__(self, name: str, message: str, code: int | None = None, text: str | None = None):
        super().__init__(message)
        self.name, self.message, self.code, self.text = name, message, code, text

    @classmethod
    def from_engine(cls, exc: BaseException, codes: Mapping[str, int]) -> "ClickHouseError":
        text = str(exc).strip()
        code = _ERROR.match(text)
        name = _ERROR_NAME.search(text)
        if code and name:
            return cls(name.group(1), text, int(code.group(1)), text)
        return cls("STD_EXCEPTION", f"{type(exc).__name__}: {text}", codes.get("STD_EXCEPTION"))


@dataclass
class _Call:
    """What a request asks, taken from the HTTP request on the event loop."""

    user: str
    method: str
    params: list[tuple[str, str]]
    body: bytes
    content_type: str
    content_encoding: str
    accept_encoding: str
    query_id: str
    database: str
    default_format: str


@dataclass
class _Answer:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class _Server(uvicorn.Server):
    """uvicorn without signal handlers: the owner of the process decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class QueryEndpoint:
    """ClickHouse's HTTP interface on an embedded store, served from a background thread."""

    def __init__(self, store: Path, users: Mapping[str, str], host: str = "127.0.0.1", port: int = 8123,
                 max_execution_time: float = 30.0, max_concurrent_queries: int = 16,
                 tls_cert: Path | str | None = None, tls_key: Path | str | None = None,
                 metrics: Any = None):
        if not users:
            raise ValueError("the query endpoint needs at least one user: it has no anonymous access")
        if max_execution_time <= 0:
            raise ValueError("max_execution_time must be positive")
        self.store = Path(store)
        # clickhouse-connect opens chdb:// paths through realpath: the same string reaches the same engine.
        self._store_path = os.path.realpath(self.store)
        self.users = dict(users)
        self.host = host
        self.port = port
        self.max_execution_time = float(max_execution_time)
        self.max_concurrent_queries = max_concurrent_queries
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("TLS needs both a certificate (tls_cert) and its key (tls_key)")
        self.tls_cert = Path(tls_cert) if tls_cert else None
        self.tls_key = Path(tls_key) if tls_key else None
        self.stats = QueryStats()
        if metrics is None:
            from cxledger.metrics import process_metrics

            metrics = process_metrics()
        self.metrics = metrics
        self._formats: dict[str, str] = {}  # lower-case name -> ClickHouse's spelling
        self._running = 0
        self._anchor: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._codes: dict[str, int] = {}
        self._setting_types: dict[str, str] = {}
        self._refused_functions: frozenset[str] = _REFUSED_FUNCTIONS
        self._timezone = "UTC"
        self._display_name = socket.gethostname()
        self._version = ""

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://{self.host}:{self.port}"

    def _check_tls(self) -> None:
        """Load the certificate and key once here, so that a bad file stops the start with
        its reason (uvicorn would fail in its thread)."""
        if self.tls_cert is None:
            return
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                self.tls_cert, self.tls_key, password=lambda: b"")
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
            raise QueryEndpointError(
                f"cannot serve TLS with the certificate {self.tls_cert} and the key "
                f"{self.tls_key}: {reason} (PEM files, the key unencrypted and matching the "
                "certificate)") from None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store, bind the port and serve from a thread; return once listening."""
        if self._thread is not None:
            raise QueryEndpointError("the query endpoint is already running")
        self._check_tls()
        self._open_store()
        try:
            sock = self._bind()
        except BaseException:
            self._close_store()
            raise
        self.port = sock.getsockname()[1]
        self._pool = ThreadPoolExecutor(max_workers=self.max_concurrent_queries,
                                        thread_name_prefix="cxledger-query")
        tls = ({"ssl_certfile": str(self.tls_cert), "ssl_keyfile": str(self.tls_key),
                "ssl_version": ssl.PROTOCOL_TLS_SERVER} if self.tls_cert else {})
        # log_config=None: uvicorn's records go to the root logger, rendered like every other
        # line (cxledger.logs), not through uvicorn's own plain-text handlers
        config = uvicorn.Config(self._app(), log_level="warning", access_log=False, lifespan="off",
                                log_config=None,
                                server_header=False, timeout_keep_alive=KEEP_ALIVE_SECONDS,
                                timeout_graceful_shutdown=5, **tls)
        if self.tls_cert:  # uvicorn's context would accept TLS 1.0 and 1.1
            config.load()
            config.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self._server = _Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="cxledger-query-endpoint", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise QueryEndpointError(f"the query endpoint did not start on {self.url}; "
                                         "see the log above for uvicorn's reason")
            time.sleep(0.01)
        log.info("query endpoint listening", url=self.url, store=self._store_path,
                 max_execution_time=self.max_execution_time, tls=self.tls_cert is not None)

    def stop(self) -> None:
        """Stop serving, wait for requests in flight (bounded), close the store handle."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=self.max_execution_time + 10)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            log.info("query endpoint stopped", url=self.url, queries=self.stats.queries, errors=self.stats.errors)
        self._server, self._thread, self._pool = None, None, None
        self._close_store()

    def __enter__(self) -> "QueryEndpoint":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _open_store(self) -> None:
        import chdb

        try:
            # Held open while serving: it keeps the engine up, so a request's handle costs 1 ms.
            self._anchor = chdb.connect(self._store_path)
        except Exception as exc:
            text = str(exc)
            if "Cannot lock file" in text:
                raise QueryEndpointError(f"the store {self._store_path} is in use by another process "
                                         "(one process owns a chDB directory): serve it from that "
                                         "process, or stop it first") from exc
            if "already initialized" in text:
                raise QueryEndpointError(f"this process has another chDB store open; the endpoint must "
                                         f"serve that one (asked for {self._store_path})") from exc
            raise QueryEndpointError(f"cannot open the store {self._store_path}: {text}") from exc
        rows = self._rows("SELECT number, errorCodeToName(number) FROM numbers(2000) "
                          "WHERE errorCodeToName(number) != ''")
        self._codes = {name: int(code) for code, name in rows}
        self._setting_types = dict(self._rows("SELECT name, type FROM system.settings"))
        scalar = {name.lower() for (name,) in self._rows("SELECT name FROM system.functions")}
        refused = {name.lower() for (name,) in self._rows(
            "SELECT name FROM system.table_functions WHERE NOT allow_readonly")}
        self._refused_functions = frozenset((refused - scalar) | _REFUSED_FUNCTIONS)
        self._timezone = self._rows("SELECT timezone()")[0][0]
        self._formats = {name.lower(): name for (name,) in self._rows(
            "SELECT name FROM system.formats WHERE is_output")}
        self._version = chdb.engine_version

    def _close_store(self) -> None:
        if self._anchor is not None:
            with contextlib.suppress(Exception):
                self._anchor.close()
            self._anchor = None

    def _rows(self, sql: str) -> list[list[str]]:
        text = self._anchor.query(sql, "TabSeparatedRaw").bytes().decode()
        return [line.split("\t") for line in text.splitlines()]

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise QueryEndpointError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; stop what listens "
                "there or choose another port (--port, CXLEDGER_QUERY_PORT)") from exc
        sock.setblocking(False)
        return sock

    # -- HTTP ----------------------------------------------------------------------------------

    def _app(self) -> Starlette:
        return Starlette(routes=[
            Route("/ping", self._ping, methods=["GET", "HEAD"]),
            Route("/replicas_status", self._ping, methods=["GET", "HEAD"]),
            Route("/{path:path}", self._handle, methods=["GET", "POST", "HEAD"]),
        ])

    async def _ping(self, request: Request) -> Response:
        return Response(b"Ok.\n", headers={"Content-Type": "text/plain; charset=UTF-8"})

    async def _handle(self, request: Request) -> Response:
        started = time.monotonic()
        params = list(request.query_params.multi_items())
        names = {key for key, _ in params}
        query_id = _first(params, "query_id") or request.headers.get("x-clickhouse-query-id") or str(uuid.uuid4())
        if request.method in ("GET", "HEAD") and request.url.path == "/" and "query" not in names:
            return await self._ping(request)  # ClickHouse answers "Ok." on the root without a query
        user = ""
        fmt = request.headers.get("x-clickhouse-format") or _first(params, "default_format")
        try:
            user = self._authenticate(request, params)
            call = _Call(
                user=user, method=request.method, params=params, body=await _read_body(request, self._codes),
                content_type=request.headers.get("content-type", ""),
                content_encoding=request.headers.get("content-encoding", ""),
                accept_encoding=request.headers.get("accept-encoding", ""), query_id=query_id,
                database=request.headers.get("x-clickhouse-database") or _first(params, "database"),
                default_format=request.headers.get("x-clickhouse-format") or _first(params, "default_format"))
            if self._running >= self.max_concurrent_queries:
                raise self._error("TOO_MANY_SIMULTANEOUS_QUERIES",
                                  f"Too many simultaneous queries. Maximum: {self.max_concurrent_queries}")
            self._running += 1
            self.stats.queries += 1
            self.stats.last_query_at = datetime.now(timezone.utc)
            self.metrics.queries_in_flight.inc()
            try:
                loop = asyncio.get_running_loop()
                answer = await loop.run_in_executor(self._pool, self._execute, call)
            finally:
                self._running -= 1
                self.metrics.queries_in_flight.dec()
        except ClickHouseError as err:
            self.stats.errors += 1
            log.info("query failed", query_id=query_id, user=user, error=err.name, code=self._code(err),
                     elapsed_ms=round((time.monotonic() - started) * 1000, 1))
            self._observe("client_error" if self._code(err) < 500 else "server_error", fmt, started)
            return self._error_response(err, query_id, request)
        except Exception as exc:  # a bug here, not a ClickHouse error: say so in ClickHouse's form
            self.stats.errors += 1
            log.exception("query endpoint error", query_id=query_id)
            self._observe("server_error", fmt, started)
            return self._error_response(self._error("STD_EXCEPTION", f"{type(exc).__name__}: {exc}"),
                                        query_id, request)
        self._observe("ok", answer.headers.get("X-ClickHouse-Format") or fmt, started)
        log.debug("query", query_id=query_id, user=user, elapsed_ms=round((time.monotonic() - started) * 1000, 1),
                  format=answer.headers.get("X-ClickHouse-Format"), bytes=len(answer.body))
        headers = {"X-ClickHouse-Server-Display-Name": self._display_name,
                   "Keep-Alive": f"timeout={KEEP_ALIVE_SECONDS}", **answer.headers}
        _cors(request, params, headers)
        return Response(answer.body, headers=headers)

    def _observe(self, outcome: str, fmt: str | None, started: float) -> None:
        """One request in ``cxledger_query_duration_seconds``; the format label is one of the
        engine's output formats (or "other"), so a client's typo makes no new series."""
        label = self._formats.get((fmt or "TabSeparated").lower(), "other")
        self.metrics.query_seconds.labels(outcome, label).observe(time.monotonic() - started)

    def _authenticate(self, request: Request, params: list[tuple[str, str]]) -> str:
        """The user, from X-ClickHouse-User/Key, HTTP basic auth or user/password parameters."""
        header_user = request.headers.get("x-clickhouse-user")
        header_key = request.headers.get("x-clickhouse-key")
        authorization = request.headers.get("authorization", "")
        in_params = any(key in ("user", "password") for key, _ in params)
        schemes = sum((header_user is not None or header_key is not None, bool(authorization), in_params))
        if schemes > 1:
            raise self._error("AUTHENTICATION_FAILED", "Invalid authentication: it is not allowed to use "
                              "several authentication methods (headers, Authorization, URL parameters) "
                              "simultaneously")
        if header_user is not None or header_key is not None:
            user, password = header_user or "default", header_key or ""
        elif authorization:
            scheme, _, encoded = authorization.partition(" ")
            if scheme.lower() != "basic":
                raise self._error("AUTHENTICATION_FAILED",
                                  f"Invalid authentication: '{scheme}' HTTP Authorization scheme is not supported")
            try:
                user, _, password = b64decode(encoded.strip(), validate=True).decode().partition(":")
            except ValueError:
                raise self._error("AUTHENTICATION_FAILED",
                                  "Invalid authentication: the Basic credentials are not valid base64") from None
        elif in_params:
            user, password = _first(params, "user") or "default", _first(params, "password")
        else:
            raise self._error("REQUIRED_PASSWORD", "Authentication required: send a user and password "
                              "(HTTP basic auth, X-ClickHouse-User and X-ClickHouse-Key headers, or "
                              "user and password URL parameters)")
        expected = self.users.get(user)
        # Compare even for an unknown user, so the answer takes the same time either way.
        ok = hmac.compare_digest(password.encode(), (expected if expected is not None else "\0").encode())
        if expected is None or not ok:
            raise self._error("AUTHENTICATION_FAILED", f"{user}: Authentication failed: password is "
                              "incorrect, or there is no user with such name")
        return user

    def _error_response(self, err: ClickHouseError, query_id: str, request: Request) -> Response:
        code = self._code(err)
        text = (err.text or f"Code: {code}. DB::Exception: {err.message}. ({err.name})")
        headers = {"X-ClickHouse-Exception-Code": str(code), "X-ClickHouse-Query-Id": query_id,
                   "X-ClickHouse-Server-Display-Name": self._display_name,
                   "Content-Type": "text/plain; charset=UTF-8", "Keep-Alive": f"timeout={KEEP_ALIVE_SECONDS}"}
        if err.name == "REQUIRED_PASSWORD":
            headers["WWW-Authenticate"] = 'Basic realm="ClickHouse"'
        _cors(request, list(request.query_params.multi_items()), headers)
        return Response(f"{text} (version {self._version})\n".encode(),
                        status_code=_STATUS_BY_ERROR.get(err.name, 500), headers=headers)

    def _code(self, err: ClickHouseError) -> int:
        return err.code if err.code is not None else self._codes.get(err.name, 1002)

    def _error(self, name: str, message: str) -> ClickHouseError:
        return ClickHouseError(name, message, self._codes.get(name))

    # -- one query, on a worker thread ----------------------------------------------------------

    def _execute(self, call: _Call) -> _Answer:
        import chdb

        text, query_params = self._query_text(call)
        settings, query_params = _split_params(call.params, query_params)
        if _truthy(_first(call.params, "compress")) or _truthy(_first(call.params, "decompress")):
            raise self._error("NOT_IMPLEMENTED", "ClickHouse's own block compression (compress=1, "
                              "decompress=1) is not supported by this endpoint: ask for HTTP compression "
                              "with Accept-Encoding (and Content-Encoding for the request) instead")
        default_format = call.default_format or "TabSeparated"
        if default_format.lower() in _PYTHON_SIDE_FORMATS:
            raise self._error("UNKNOWN_FORMAT", f"Unknown format {default_format}")
        conn = chdb.connect(self._store_path)
        try:
            for statement, params in self._settings_statements(settings):
                self._run(conn, statement, params)
            self._run(conn, "SET enable_http_compression = 1")
            if call.database:
                self._run(conn, f"USE {_quote_identifier(call.database)}")
            canonical = self._canonical(conn, text)
            fmt = self._check(canonical) or default_format
            self._run(conn, "SET readonly = 1")
            try:
                result = conn.query(text, default_format, params=query_params)
            except Exception as exc:
                raise ClickHouseError.from_engine(exc, self._codes) from None
            body = result.bytes()
            summary = {
                "read_rows": result.storage_rows_read(), "read_bytes": result.storage_bytes_read(),
                "written_rows": 0, "written_bytes": 0, "total_rows_to_read": result.storage_rows_read(),
                "result_rows": result.rows_read(), "result_bytes": result.bytes_read(),
                "elapsed_ns": int(result.elapsed() * 1e9),
            }
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        headers = {
            "Content-Type": _content_type(fmt, dict(settings)),
            "X-ClickHouse-Query-Id": call.query_id,
            "X-ClickHouse-Format": fmt,
            "X-ClickHouse-Timezone": dict(settings).get("session_timezone") or self._timezone,
            "X-ClickHouse-Summary": json.dumps({k: str(v) for k, v in summary.items()}, separators=(",", ":")),
        }
        method = None
        if call.accept_encoding and _truthy(_first(call.params, "enable_http_compression") or "1"):
            method = _choose_compression(call.accept_encoding)
        if method:
            level = _int(_first(call.params, "http_zlib_compression_level"), 3)
            body = _compress(method, body, level)
            headers["Content-Encoding"] = method
        if call.method == "HEAD":
            body = b""
        return _Answer(body, headers)

    def _query_text(self, call: _Call) -> tuple[str, dict[str, str]]:
        """ClickHouse's query text: the query parameter, a line break, the body (or form fields)."""
        body = _decompress(call.content_encoding, call.body, self._codes)
        url_query = _first(call.params, "query")
        form_params: dict[str, str] = {}
        if call.content_type.lower().startswith("multipart/form-data"):
            query = url_query
            for name, value, filename in _form_fields(call.content_type, body):
                if filename is not None:
                    raise self._error("NOT_IMPLEMENTED", "external data (tables sent as files with the "
                                      "query) is not supported by this endpoint: send the values as query "
                                      "parameters")
                if name == "query":
                    query += _utf8(value, self._codes)
                elif name.startswith("param_"):
                    form_params.setdefault(name[len("param_"):], _utf8(value, self._codes))
            return query, form_params
        return (url_query + "\n" if url_query else "") + _utf8(body, self._codes), form_params

    def _settings_statements(self, settings: list[tuple[str, str]]
                             ) -> list[tuple[str, dict[str, str]]]:
        """SET statements (with their bound value) for the request's settings;
        max_execution_time capped at the limit."""
        statements, limit = [], self.max_execution_time
        for name, value in settings:
            if not _IDENTIFIER.fullmatch(name):
                raise self._error("UNKNOWN_SETTING", f"Unknown setting '{name}'")
            if name == "readonly":
                continue  # the connection ends readonly = 1 whatever the client asks
            kind = self._setting_types.get(name)
            if name in _REFUSED_SETTINGS or (kind in _REFUSED_SETTING_TYPES and name not in _STRING_SETTINGS):
                raise self._error("READONLY", f"Cannot modify '{name}' setting in readonly mode")
            # the name is a checked identifier; the value is bound, never spliced into the SQL
            statements.append((f"SET {name} = {{v:String}}", {"v": _escape(value)}))
            if name == "max_execution_time":
                with contextlib.suppress(ValueError):
                    requested = float(value)
                    limit = min(requested, self.max_execution_time) if requested > 0 else limit
        statements.append((f"SET max_execution_time = {limit!r}", {}))
        return statements

    def _canonical(self, conn: Any, text: str) -> str:
        """ClickHouse's canonical one-line form of the text, which must be one statement."""
        try:
            result = conn.query("SELECT formatQuerySingleLine({q:String})", "TabSeparatedRaw",
                                params={"q": _escape(text)})
        except Exception as exc:
            err = ClickHouseError.from_engine(exc, self._codes)
            scoped = _PARSER_SCOPE.match(err.text or "")
            if scoped:  # the parser's error on the client's text, without our wrapper's scope
                head = scoped.group(1).rstrip()
                err.text = f"{head}{'' if head.endswith('.') else '.'} ({scoped.group(2)})"
            raise err from None
        return result.bytes().decode().rstrip("\n")

    def _check(self, canonical: str) -> str | None:
        """Refuse what readonly mode lets through; return the query's own FORMAT, if any."""
        bare = _LITERAL.sub(lambda m: m.group(0)[0] * 2, canonical)
        first = re.match(r"[\s(]*([A-Za-z]+)", bare)
        refused = (first is None or first.group(1).upper() not in _READ_STATEMENTS
                   or _REFUSED_KEYWORDS.search(bare) is not None
                   or any(m.group(1).lower() in self._refused_functions for m in _CALL.finditer(bare)))
        if refused:
            raise self._error("READONLY", "default: Cannot execute query in readonly mode")
        fmt = _FORMAT_CLAUSE.search(bare)
        return fmt.group(1) if fmt else None

    def _run(self, conn: Any, sql: str, params: dict[str, str] | None = None) -> None:
        try:
            conn.query(sql, "TabSeparated", params=params or {})
        except Exception as exc:
            raise ClickHouseError.from_engine(exc, self._codes) from None


# -- helpers ----------------------------------------------------------------------------------

def _first(params: Sequence[tuple[str, str]], name: str) -> str:
    return next((value for key, value in params if key == name), "")


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _int(value: str, default: int) -> int:
    try:
        return int(value)
    except ValueError:
        return default


def _split_params(params: Sequence[tuple[str, str]],
                  query_params: dict[str, str]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Settings (in order: the last value wins) and query parameters (the first value wins)."""
    settings = []
    for key, value in params:
        if key.startswith("param_"):
            query_params.setdefault(key[len("param_"):], value)
        elif key and key not in HTTP_PARAMETERS:
            settings.append((key, value))
    return settings, query_params


def _escape(text: str) -> str:
    """Query parameter values are read in the escaped (TSV) form."""
    return (text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
            .replace("\r", "\\r").replace("\0", "\\0"))


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _utf8(data: bytes | str, codes: Mapping[str, int]) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClickHouseError("CANNOT_PARSE_TEXT", f"The query is not valid UTF-8 (byte {exc.start}); "
                              "send binary values as query parameters in escaped form",
                              codes.get("CANNOT_PARSE_TEXT")) from None


async def _read_body(request: Request, codes: Mapping[str, int]) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            raise ClickHouseError("QUERY_IS_TOO_LARGE", f"The request body is larger than "
                                  f"{MAX_REQUEST_BYTES >> 20} MiB; this endpoint answers queries, it takes no data",
                                  codes.get("QUERY_IS_TOO_LARGE"))
        chunks.append(chunk)
    return b"".join(chunks)


def _form_fields(content_type: str, body: bytes) -> list[tuple[str, bytes, str | None]]:
    """(name, value, filename) of each part of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    fields = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition") or ""
        fields.append((str(name), part.get_payload(decode=True) or b"", part.get_filename()))
    return fields


def _decompress(encoding: str, data: bytes, codes: Mapping[str, int]) -> bytes:
    """A request body sent with Content-Encoding, inflated to at most MAX_REQUEST_BYTES."""
    method = encoding.strip().lower()
    if method in ("", "auto", "none", "identity"):
        return data
    limit = MAX_REQUEST_BYTES + 1
    try:
        if method in ("gzip", "gz", "deflate"):
            out = zlib.decompressobj(31 if method != "deflate" else 15).decompress(data, limit)
        elif method in ("zstd", "zst"):
            from backports import zstd
            out = zstd.ZstdDecompressor().decompress(data, limit)
        elif method == "lz4":
            import lz4.frame
            out = lz4.frame.LZ4FrameDecompressor().decompress(data, limit)
        elif method in ("xz", "lzma"):
            out = lzma.LZMADecompressor().decompress(data, limit)
        elif method == "bz2":
            out = bz2.BZ2Decompressor().decompress(data, limit)
        elif method in ("br", "brotli") and _brotli() is not None:
            out = _brotli().decompress(data)
        else:
            raise ClickHouseError("NOT_IMPLEMENTED", f"Unknown compression method '{encoding}'. Only 'auto', "
                                  "'none', 'gzip', 'deflate', 'xz', 'zstd', 'lz4', 'bz2'"
                                  f"{', br' if _brotli() else ''} are supported as Content-Encoding here",
                                  codes.get("NOT_IMPLEMENTED"))
    except ClickHouseError:
        raise
    except Exception as exc:
        raise ClickHouseError("CANNOT_DECOMPRESS", f"Cannot decompress the request body ({method}): {exc}",
                              codes.get("CANNOT_DECOMPRESS")) from None
    if len(out) > MAX_REQUEST_BYTES:
        raise ClickHouseError("QUERY_IS_TOO_LARGE", f"The request body inflates to more than "
                              f"{MAX_REQUEST_BYTES >> 20} MiB", codes.get("QUERY_IS_TOO_LARGE"))
    return out


def _brotli():
    try:
        import brotli
        return brotli
    except ImportError:
        return None


def _can_compress(method: str) -> bool:
    if method == "zstd":
        try:
            from backports import zstd  # noqa: F401
        except ImportError:
            return False
    if method == "lz4":
        try:
            import lz4.frame  # noqa: F401
        except ImportError:
            return False
    if method == "br":
        return _brotli() is not None or _cramjam() is not None
    return method != "snappy"  # ClickHouse cannot write snappy either


def _cramjam():
    try:
        import cramjam
        return cramjam
    except ImportError:
        return None


def _choose_compression(accept_encoding: str) -> str | None:
    return next((m for m in _COMPRESSION_PREFERENCE if m in accept_encoding and _can_compress(m)), None)


def _compress(method: str, data: bytes, level: int) -> bytes:
    low, high = _LEVELS.get(method, (1, 9))
    level = max(low, min(high, level))
    if method == "gzip":
        return gzip.compress(data, compresslevel=level, mtime=0)
    if method == "deflate":
        return zlib.compress(data, level)
    if method == "zstd":
        from backports import zstd
        return zstd.compress(data, level=level)
    if method == "lz4":
        import lz4.frame
        return lz4.frame.compress(data, compression_level=level)
    if method == "br":
        brotli = _brotli()
        return brotli.compress(data, quality=level) if brotli else bytes(_cramjam().brotli.compress(data, level))
    if method == "xz":
        return lzma.compress(data, preset=level)
    return bz2.compress(data, compresslevel=level)


def _content_type(fmt: str, settings: Mapping[str, str]) -> str:
    """The Content-Type ClickHouse's output formats declare (IOutputFormat::getContentType)."""
    name = fmt.lower()
    if name.startswith(("tabseparated", "tsv")) or name == "tskv":
        return "text/tab-separated-values; charset=UTF-8"
    if name.startswith("csv"):
        return "text/csv; charset=UTF-8; header=" + ("present" if "withnames" in name else "absent")
    if name in ("jsoneachrow", "jsonlines", "ndjson", "jsonstringseachrow"):
        if _truthy(settings.get("output_format_json_array_of_rows", "0")):
            return "application/json; charset=UTF-8"
        return "application/x-ndjson; charset=UTF-8"
    if name in ("json", "jsoncompact", "jsonstrings", "jsoncompactstrings"):
        return "application/json; charset=UTF-8"
    if name in ("native", "rowbinary", "rowbinarywithnames", "rowbinarywithnamesandtypes",
                "arrow", "arrowstream", "parquet"):
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


def _cors(request: Request, params: Sequence[tuple[str, str]], headers: dict[str, str]) -> None:
    if _truthy(_first(params, "add_http_cors_header")) and request.headers.get("origin"):
        headers["Access-Control-Allow-Origin"] = "*"


# -- command line -------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cxledger.query_endpoint",
        description="Serve ClickHouse's HTTP interface (read-only) on an embedded chDB store.")
    parser.add_argument("--store", required=True, type=Path, help="the chDB store directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123, help="0 picks a free port")
    parser.add_argument("--user", default="default")
    parser.add_argument("--password", default=os.environ.get("CXLEDGER_QUERY_PASSWORD"),
                        help="default: $CXLEDGER_QUERY_PASSWORD")
    parser.add_argument("--max-execution-time", type=float, default=30.0,
                        help="seconds any one query may run (clients may lower it)")
    parser.add_argument("--max-concurrent-queries", type=int, default=16)
    parser.add_argument("--log-level", default=os.environ.get("CXLEDGER_LOG_LEVEL", "info"))
    parser.add_argument("--tls-cert", type=Path, default=os.environ.get("CXLEDGER_QUERY_TLS_CERT"),
                        help="PEM certificate (chain): serve HTTPS (default: $CXLEDGER_QUERY_TLS_CERT)")
    parser.add_argument("--tls-key", type=Path, default=os.environ.get("CXLEDGER_QUERY_TLS_KEY"),
                        help="its PEM key, unencrypted (default: $CXLEDGER_QUERY_TLS_KEY)")
    args = parser.parse_args(argv)

    from cxledger.logs import configure_logging

    configure_logging(os.environ.get("CXLEDGER_LOG_FORMAT"), args.log_level)
    if not args.password:
        parser.error("give --password (or CXLEDGER_QUERY_PASSWORD): the endpoint has no anonymous access")
    if not args.store.is_dir():
        parser.error(f"no store at {args.store}: give the directory of an embedded store "
                     "(e.g. .cxledger/store after `cxledger demo`)")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("TLS needs both --tls-cert and --tls-key (or CXLEDGER_QUERY_TLS_CERT and _KEY)")
    endpoint = QueryEndpoint(args.store, {args.user: args.password}, host=args.host, port=args.port,
                             max_execution_time=args.max_execution_time,
                             max_concurrent_queries=args.max_concurrent_queries,
                             tls_cert=args.tls_cert, tls_key=args.tls_key)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        endpoint.start()
    except QueryEndpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serving ClickHouse's HTTP interface on {endpoint.url} for {endpoint.store}", flush=True)
    while not stopping.wait(0.5):
        pass
    endpoint.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
