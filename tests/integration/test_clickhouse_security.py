"""ClickHouse credentials and TLS pass through (security), against the real query
endpoint (``python -m cxledger.query_endpoint``, which checks credentials) in a subprocess:

- the DSN's user and password (``CXLEDGER_CLICKHOUSE_DSN``, URL-quoted) reach the server through
  the project's own path (settings -> ``sinks.clickhouse.connect`` -> clickhouse-connect); a wrong
  password is refused with ClickHouse's AUTHENTICATION_FAILED and the error does not show it;
- with a certificate and key (CXLEDGER_QUERY_TLS_CERT/_KEY) the endpoint serves HTTPS only:
  clickhouse-connect with the CA (``verify=True, ca_cert=...``, or ``?ca_cert=`` in the DSN)
  gets answers; a client without the CA, or with another CA, is refused at the handshake; a
  plain-HTTP client gets nothing.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

import clickhouse_connect
import pytest

from cxledger.config import load_settings
from tests.integration.tls_helpers import make_pki

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
USER = "reader"
PASSWORD = "Pw-4f9:Ü/@?#%-secret"  # every character a DSN must quote


class Endpoint:
    """``python -m cxledger.query_endpoint`` on a store of its own, on a free port."""

    def __init__(self, store: Path, *, tls=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CXLEDGER_")}
        env.update(PYTHONPATH=str(ROOT), CXLEDGER_QUERY_PASSWORD=PASSWORD,
                   CXLEDGER_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
        if tls is not None:
            env.update(CXLEDGER_QUERY_TLS_CERT=str(tls.cert), CXLEDGER_QUERY_TLS_KEY=str(tls.key))
        store.mkdir(parents=True, exist_ok=True)
        self.log = store.parent / f"{store.name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cxledger.query_endpoint", "--store", str(store), "--port", "0",
             "--user", USER], env=env, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=open(self.log, "w"), text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"on (https?)://127\.0\.0\.1:(\d+)", line)
        if not match:
            self.stop()
            pytest.fail(f"the endpoint did not start: {line!r} {self.log.read_text()}")
        self.scheme, self.port = match.group(1), int(match.group(2))

    def dsn(self, password: str = PASSWORD, scheme: str | None = None, query: str = "") -> str:
        return (f"{scheme or self.scheme}://{USER}:{quote(password, safe='')}@127.0.0.1:"
                f"{self.port}/default{query}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        return self.log.read_text()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    endpoint = Endpoint(tmp_path_factory.mktemp("plain") / "store")
    yield endpoint
    assert PASSWORD not in endpoint.stop()


@pytest.fixture(scope="module")
def secure(tmp_path_factory, pki):
    endpoint = Endpoint(tmp_path_factory.mktemp("tls") / "store", tls=pki)
    yield endpoint
    assert PASSWORD not in endpoint.stop()


def project_client(dsn: str):
    """A client the way the project makes one: from the settings' DSN."""
    from sinks.clickhouse import connect

    settings = load_settings(environ={"CXLEDGER_CLICKHOUSE_DSN": dsn})
    assert PASSWORD not in repr(settings)
    return connect(settings.dsn)


def test_dsn_credentials_reach_the_server(plain):
    client = project_client(plain.dsn())
    assert client.query("SELECT 1 + {n:UInt8}", parameters={"n": 1}).result_rows == [(2,)]
    client.close()


def test_a_wrong_password_is_refused_without_showing_either(plain):
    with pytest.raises(Exception) as info:
        clickhouse_connect.get_client(dsn=plain.dsn("wrong-Pw-77"))
    text = str(info.value)
    assert "516" in text or "AUTHENTICATION_FAILED" in text or "Authentication failed" in text
    assert "wrong-Pw-77" not in text and PASSWORD not in text
    request = urllib.request.Request(f"http://127.0.0.1:{plain.port}/?query=SELECT%201")
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(request, timeout=10)
    assert anonymous.value.code == 401


def test_project_errors_do_not_show_the_dsn_password(plain):
    from sinks.clickhouse import StoreError

    with pytest.raises(StoreError) as info:
        project_client(plain.dsn("wrong-Pw-77"))
    assert "wrong-Pw-77" not in str(info.value)


def test_tls_with_the_ca(secure, pki):
    assert secure.scheme == "https"
    client = clickhouse_connect.get_client(host="127.0.0.1", port=secure.port, username=USER,
                                           password=PASSWORD, secure=True, verify=True,
                                           ca_cert=str(pki.ca))
    assert client.query("SELECT 40 + 2").result_rows == [(42,)]
    client.close()
    # a DSN with the CA, and the scheme given as the interface
    client = clickhouse_connect.get_client(dsn=secure.dsn(query=f"?ca_cert={quote(str(pki.ca))}"),
                                           interface="https")
    assert client.query("SELECT 'tls'").result_rows == [("tls",)]
    client.close()


def test_tls_dsn_through_the_project_path(secure, pki):
    client = project_client(secure.dsn(query=f"?ca_cert={quote(str(pki.ca))}"))
    assert client.query("SELECT 'tls'").result_rows == [("tls",)]
    client.close()


@pytest.mark.parametrize("ca", ["system", "other"])
def test_tls_without_the_ca_is_refused(secure, pki, ca):
    kwargs = {} if ca == "system" else {"ca_cert": str(pki.other_ca)}
    with pytest.raises(Exception) as info:
        clickhouse_connect.get_client(host="127.0.0.1", port=secure.port, username=USER,
                                      password=PASSWORD, secure=True, verify=True, **kwargs)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value) or "certificate verify failed" in str(
        info.value)
    assert PASSWORD not in str(info.value)


def test_tls_endpoint_speaks_no_plain_http(secure):
    with pytest.raises(Exception):
        clickhouse_connect.get_client(dsn=secure.dsn(scheme="http"), connect_timeout=5,
                                      send_receive_timeout=5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_1_is_refused(secure, pki):
    def ping(version: ssl.TLSVersion) -> bytes:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(pki.ca)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that this client offers TLS 1.1
        context.minimum_version = context.maximum_version = version
        with urllib.request.urlopen(f"https://127.0.0.1:{secure.port}/ping", context=context,
                                    timeout=10) as response:
            return response.read()

    assert ping(ssl.TLSVersion.TLSv1_2) == b"Ok.\n"
    with pytest.raises((ssl.SSLError, OSError)):
        ping(ssl.TLSVersion.TLSv1_1)


def test_bad_tls_files_stop_the_start_with_the_reason(tmp_path, pki):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXLEDGER_")}
    env.update(PYTHONPATH=str(ROOT), CXLEDGER_QUERY_PASSWORD=PASSWORD)
    (tmp_path / "store").mkdir()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cxledger.query_endpoint", "--store",
                           str(tmp_path / "store"), "--port", "0", "--tls-cert", str(pki.cert),
                           "--tls-key", str(pki.ca)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "cannot serve TLS with the certificate" in done.stderr
    assert time.monotonic() - started < 60
