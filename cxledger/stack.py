"""The stack record: how every command finds a running ``cxledger up`` on a store.

``cxledger up`` keeps, in its store directory:

    stack.lock    a lock (flock) held for as long as the stack runs; the kernel releases it
                  however the stack ends, so a record left by a killed stack is never trusted
    stack.json    pid, bootstrap, the query endpoint (with the reader's password), the
                  gateway and the seal key; mode 0600
    status.json   the last status line as data, refreshed every second
    logs/         JSON logs of the stack, the broker, the processors and the gateway

``find_stack(store)`` returns the record of the stack running on that store, or None;
``attach(settings, record)`` gives the settings a command uses to talk to it: its Kafka
bootstrap, its query endpoint as the ClickHouse DSN, acknowledgements that wait for the
store when the stack runs the single-machine broker, and the stack's seal key (unless the
settings have their own), so that what it publishes is not checked again by the stack.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, IO
from urllib.parse import quote

from cxledger.config import Settings

RECORD = "stack.json"
LOCK = "stack.lock"
STATUS = "status.json"
LOGS = "logs"


class StackRunning(RuntimeError):
    """Another ``cxledger up`` holds the store."""


@dataclass
class StackRecord:
    pid: int
    store: str
    started_at: str
    state: str                      # starting | ready | stopping
    bootstrap: str
    local_broker: bool              # True: the in-memory broker this stack started
    query: dict[str, Any] = field(default_factory=dict)    # host, port, user, password
    gateway: dict[str, Any] = field(default_factory=dict)  # host, port
    workers: int = 1
    acks: str = "store"             # what a publish acknowledgement waits for: store | broker
    seal_key: str | None = None     # the stack's seal key (schemas.seal), for its producers

    @property
    def query_scheme(self) -> str:
        return "https" if self.query.get("tls_ca") else "http"

    @property
    def query_url(self) -> str:
        return f"{self.query_scheme}://{_connect_host(self.query['host'])}:{self.query['port']}"

    @property
    def gateway_url(self) -> str:
        return f"http://{_connect_host(self.gateway['host'])}:{self.gateway['port']}"

    @property
    def dsn(self) -> str:
        """clickhouse-connect DSN of the stack's query endpoint, credentials included."""
        user = quote(self.query["user"], safe="")
        password = quote(self.query["password"], safe="")
        dsn = (f"{self.query_scheme}://{user}:{password}@{_connect_host(self.query['host'])}:"
               f"{self.query['port']}/default")
        return dsn + (f"?ca_cert={quote(self.query['tls_ca'], safe='')}"
                      if self.query.get("tls_ca") else "")


def _connect_host(host: str) -> str:
    """Where a local client connects for a listen address (0.0.0.0 / :: mean loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def store_path(store: Path | str) -> Path:
    return Path(store).expanduser().resolve()


class StoreLock:
    """``StoreLock(store).acquire()`` or raise StackRunning; held until ``release``."""

    def __init__(self, store: Path):
        self.path = store_path(store) / LOCK
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StackRunning(running_message(self.path.parent)) from None
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def running_message(store: Path) -> str:
    record = read_record(store)
    who = f" (pid {record.pid})" if record else ""
    return (f"a stack is already running on {store_path(store)}{who}; use it, or stop it with "
            f"`cxledger down --store {store_path(store)}`")


def is_locked(store: Path) -> bool:
    """True while some process holds the store's stack lock (a stack runs on it)."""
    path = store_path(store) / LOCK
    if not path.exists():
        return False
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def write_json_private(path: Path, data: Any) -> None:
    """Write JSON readable by this user only (mode 0600), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2)
        out.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_record(record: StackRecord) -> None:
    write_json_private(store_path(record.store) / RECORD, asdict(record))


def read_record(store: Path) -> StackRecord | None:
    try:
        data = json.loads((store_path(store) / RECORD).read_text(encoding="utf-8"))
        return StackRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def remove_record(store: Path) -> None:
    for name in (RECORD, STATUS):
        (store_path(store) / name).unlink(missing_ok=True)


def find_stack(store: Path) -> StackRecord | None:
    """The record of the stack running on ``store``, or None (no record, or a stale one)."""
    record = read_record(store)
    if record is None or not is_locked(store):
        return None
    return record


def read_status(store: Path) -> dict[str, Any] | None:
    try:
        return json.loads((store_path(store) / STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def attach(settings: Settings, record: StackRecord) -> Settings:
    """Settings that talk to the running stack of ``record``."""
    return settings.with_(
        kafka_bootstrap=settings.kafka_bootstrap or record.bootstrap,
        clickhouse_dsn=record.dsn if record.query else settings.clickhouse_dsn,
        acks_wait_for_store=record.acks == "store",
        seal_key=settings.seal_key or record.seal_key,
    )


def logs_dir(store: Path) -> Path:
    return store_path(store) / LOGS


def http_query(record: StackRecord, sql: str, fmt: str,
               settings: dict[str, str] | None = None, timeout: float = 300.0) -> bytes:
    """Run ``sql`` on the stack's query endpoint; the result in format ``fmt``. Raises
    QueryFailed with ClickHouse's message."""
    import base64
    import urllib.error
    import urllib.parse
    import urllib.request

    params = urllib.parse.urlencode({"default_format": fmt, **(settings or {})})
    request = urllib.request.Request(f"{record.query_url}/?{params}", data=sql.encode(),
                                     method="POST")
    token = base64.b64encode(f"{record.query['user']}:{record.query['password']}".encode())
    request.add_header("Authorization", "Basic " + token.decode())
    context = None
    if record.query.get("tls_ca"):
        import ssl

        context = ssl.create_default_context(cafile=record.query["tls_ca"])
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise QueryFailed(exc.read().decode(errors="replace").strip()) from None
    except OSError as exc:
        raise QueryFailed(f"cannot reach the stack's query endpoint {record.query_url}: "
                          f"{exc}") from None


class QueryFailed(RuntimeError):
    pass
