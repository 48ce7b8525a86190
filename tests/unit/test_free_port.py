"""``free_port`` hands a child process a port to listen on: bindable, outside the range the
kernel draws outgoing connections' local ports from, and never the same one twice."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cxledger.localstack import free_port

RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


@pytest.mark.skipif(not RANGE.exists(), reason="no /proc/sys/net/ipv4/ip_local_port_range here")
def test_ports_come_from_below_the_ephemeral_range_and_are_bindable():
    start = int(RANGE.read_text().split()[0])
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < p < start for p in ports), (start, sorted(ports)[-5:])
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_someone_listens_on_is_not_handed_out(monkeypatch):
    # A range of 1,000 ports, a third of them listened on: free_port must pass those by.
    import cxledger.localstack as localstack

    low = 20_000
    monkeypatch.setattr(localstack, "_LOWEST_PORT", low)
    monkeypatch.setattr(localstack, "_ephemeral_ports_start", lambda: low + 1_000)
    monkeypatch.setattr(localstack, "_handed_out", set())
    listeners = []
    try:
        for port in range(low, low + 1_000, 3):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            s.listen()
            listeners.append(s)
        taken = {s.getsockname()[1] for s in listeners}
        given = [free_port() for _ in range(300)]
        assert len(set(given)) == 300
        assert not taken & set(given)
        assert all(low <= p < low + 1_000 for p in given)
    finally:
        for s in listeners:
            s.close()
