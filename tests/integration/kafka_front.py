"""A TLS and SASL front for the local Tansu broker: the part of a Kafka listener that Tansu 0.6
cannot be in this build (see tests/integration/test_kafka_security.py for the evidence).

Clients connect to the front as to a broker configured with ``SSL``, ``SASL_PLAINTEXT`` or
``SASL_SSL`` listeners; the broker advertises the front's address (``LocalBroker(advertised=
...)``), so every connection a client opens after the bootstrap one comes here too. Per
connection the front

1. completes the TLS handshake with its certificate (Python's ``ssl``, i.e. OpenSSL), when
   configured;
2. with users configured, runs the Kafka SASL exchange itself, as a broker does: ApiVersions
   requests are passed to the broker (its answer lists SaslHandshake and SaslAuthenticate);
   SaslHandshake (v1) and SaslAuthenticate (v0, v1) are answered here with PLAIN,
   SCRAM-SHA-256 or SCRAM-SHA-512 (RFC 5802/7677: salted PBKDF2 credentials, the client's proof
   checked, the server's signature sent, which clients check in turn); a wrong password gets
   SASL_AUTHENTICATION_FAILED (58) and the connection closed; any other request before
   authentication closes the connection, as Kafka does;
3. then passes bytes both ways, unchanged, to the broker.

It records who authenticated (user, mechanism, client id) and who was refused, for the tests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
import ssl
import struct
import threading
from dataclasses import dataclass, field

SASL_HANDSHAKE, SASL_AUTHENTICATE, API_VERSIONS = 17, 36, 18
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


class AuthFailed(Exception):
    pass


class _Plain:
    def __init__(self, users: dict[str, str]):
        self.users = users
        self.user: str | None = None

    def step(self, data: bytes) -> tuple[bool, bytes]:
        parts = data.split(b"\0")
        if len(parts) != 3:
            raise AuthFailed("malformed PLAIN message")
        self.user = parts[1].decode("utf-8", "replace")
        expected = self.users.get(self.user)
        if expected is None or not hmac.compare_digest(parts[2], expected.encode()):
            raise AuthFailed("Authentication failed: invalid credentials")
        return True, b""


class _Scram:
    """The server side of SCRAM-SHA-256/512 (no channel binding, as Kafka)."""

    ITERATIONS = 4096

    def __init__(self, mechanism: str, users: dict[str, str]):
        self.digest = "sha512" if mechanism.endswith("512") else "sha256"
        self.users = users
        self.user: str | None = None
        self.first: tuple[str, str, str, bytes] | None = None  # bare, server-first, gs2, salted

    def _h(self, data: bytes) -> bytes:
        return hashlib.new(self.digest, data).digest()

    def _hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self.digest).digest()

    def step(self, data: bytes) -> tuple[bool, bytes]:
        text = data.decode("utf-8")
        if self.first is None:
            flag, authzid, bare = text.split(",", 2)
            if flag not in ("n", "y"):
                raise AuthFailed("channel binding is not supported")
            attrs = dict(item.split("=", 1) for item in bare.split(","))
            self.user = attrs["n"].replace("=2C", ",").replace("=3D", "=")
            password = self.users.get(self.user)
            salt = os.urandom(16)
            # An unknown user gets a challenge like any other and fails at the proof.
            salted = hashlib.pbkdf2_hmac(self.digest, (password or secrets.token_hex()).encode(),
                                         salt, self.ITERATIONS)
            nonce = attrs["r"] + secrets.token_urlsafe(18)
            server_first = (f"r={nonce},s={base64.b64encode(salt).decode()},"
                            f"i={self.ITERATIONS}")
            self.first = (bare, server_first, f"{flag},{authzid},", salted)
            self.known = password is not None
            return False, server_first.encode()
        bare, server_first, gs2, salted = self.first
        without_proof, _, proof = text.rpartition(",p=")
        attrs = dict(item.split("=", 1) for item in without_proof.split(","))
        nonce = dict(i.split("=", 1) for i in server_first.split(","))["r"]
        if attrs.get("r") != nonce or base64.b64decode(attrs.get("c", "")) != gs2.encode():
            raise AuthFailed("Authentication failed: bad nonce or channel binding")
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        client_key = self._hmac(salted, b"Client Key")
        stored_key = self._h(client_key)
        signature = self._hmac(stored_key, auth_message)
        recovered = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature))
        if not self.known or not hmac.compare_digest(self._h(recovered), stored_key):
            raise AuthFailed("Authentication failed during authentication due to invalid "
                             "credentials with SASL mechanism " + self.digest.upper())
        server_signature = self._hmac(self._hmac(salted, b"Server Key"), auth_message)
        return True, b"v=" + base64.b64encode(server_signature)


@dataclass
class Seen:
    authenticated: list[tuple[str, str, str]] = field(default_factory=list)  # user, mech, client
    refused: list[tuple[str | None, str, str]] = field(default_factory=list)  # user, mech, why
    connections: int = 0


class KafkaFront:
    """``with KafkaFront(backend_port, port=P, tls=pki, users={...}) as front:``"""

    def __init__(self, backend_port: int, *, port: int, host: str = "127.0.0.1",
                 tls=None, users: dict[str, str] | None = None,
                 mechanisms: tuple[str, ...] = MECHANISMS):
        self.backend = ("127.0.0.1", backend_port)
        self.host, self.port = host, port
        self.users = users
        self.mechanisms = mechanisms
        self.context = None
        if tls is not None:
            self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.context.load_cert_chain(tls.cert, tls.key)
        self.seen = Seen()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="kafka-front")
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> "KafkaFront":
        self._thread.start()
        self._loop.set_exception_handler(self._loop_error)
        self._server = asyncio.run_coroutine_threadsafe(asyncio.start_server(
            self._connection, self.host, self.port, ssl=self.context), self._loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        async def close():
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _loop_error(self, loop, context) -> None:
        pass  # a client that went away mid-exchange: the tests look at what the clients saw

    # -- per connection --------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._tasks.add(asyncio.current_task())
        self.seen.connections += 1
        upstream = None
        try:
            upstream = await asyncio.open_connection(*self.backend)
            if self.users is None or await self._authenticate(reader, writer, *upstream):
                await asyncio.gather(self._pipe(reader, upstream[1]),
                                     self._pipe(upstream[0], writer))
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError, ssl.SSLError):
            pass
        finally:
            for w in (writer, upstream[1] if upstream else None):
                if w is not None:
                    w.close()
            self._tasks.discard(asyncio.current_task())

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    @staticmethod
    async def _frame(reader: asyncio.StreamReader) -> bytes:
        size = struct.unpack(">i", await reader.readexactly(4))[0]
        return await reader.readexactly(size)

    @staticmethod
    def _send(writer: asyncio.StreamWriter, correlation_id: int, body: bytes) -> None:
        payload = struct.pack(">i", correlation_id) + body
        writer.write(struct.pack(">i", len(payload)) + payload)

    async def _authenticate(self, reader, writer, up_reader, up_writer) -> bool:
        session, mechanism, client_id = None, "", ""
        while True:
            frame = await self._frame(reader)
            api_key, version, correlation_id = struct.unpack(">hhi", frame[:8])
            if api_key == API_VERSIONS:  # the broker's own answer
                up_writer.write(struct.pack(">i", len(frame)) + frame)
                await up_writer.drain()
                answer = await self._frame(up_reader)
                writer.write(struct.pack(">i", len(answer)) + answer)
                await writer.drain()
                continue
            if api_key not in (SASL_HANDSHAKE, SASL_AUTHENTICATE) or version > 1:
                self.seen.refused.append((None, mechanism, f"api {api_key} v{version} before "
                                                           "authentication"))
                return False
            (id_len,) = struct.unpack(">h", frame[8:10])
            client_id = frame[10:10 + max(id_len, 0)].decode("utf-8", "replace")
            body = frame[10 + max(id_len, 0):]
            if api_key == SASL_HANDSHAKE:
                (size,) = struct.unpack(">h", body[:2])
                mechanism = body[2:2 + size].decode()
                supported = mechanism in self.mechanisms and version == 1
                names = b"".join(struct.pack(">h", len(m)) + m.encode() for m in self.mechanisms)
                self._send(writer, correlation_id,
                           struct.pack(">hi", 0 if supported else UNSUPPORTED_SASL_MECHANISM,
                                       len(self.mechanisms)) + names)
                await writer.drain()
                if not supported:
                    self.seen.refused.append((None, mechanism, "unsupported mechanism"))
                    return False
                session = (_Plain(self.users) if mechanism == "PLAIN"
                           else _Scram(mechanism, self.users))
                continue
            (size,) = struct.unpack(">i", body[:4])
            token = body[4:4 + size]
            tail = struct.pack(">q", 0) if version >= 1 else b""  # session lifetime: no re-auth
            try:
                if session is None:
                    raise AuthFailed("SaslAuthenticate before SaslHandshake")
                done, reply = session.step(token)
            except (AuthFailed, ValueError, KeyError) as exc:
                message = str(exc).encode()
                self._send(writer, correlation_id,
                           struct.pack(">hh", SASL_AUTHENTICATION_FAILED, len(message)) + message
                           + struct.pack(">i", 0) + tail)
                await writer.drain()
                self.seen.refused.append((getattr(session, "user", None), mechanism, str(exc)))
                return False
            self._send(writer, correlation_id,
                       struct.pack(">hhi", 0, -1, len(reply)) + reply + tail)
            await writer.drain()
            if done:
                self.seen.authenticated.append((session.user, mechanism, client_id))
                return True
