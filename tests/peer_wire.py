"""The TCP side of the protocol written independently in Python (docs/protocol.md, "The TCP
side"), for the wire tests: frames, the mutual HMAC-SHA256 handshake, and a few requests. A test
that authenticates with this code checks the node against the documented wire format, not
against our own C++ client."""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct

HEADER = struct.Struct("<IHHIIQ")  # magic, version, op, request_id, flags, body_len
MAGIC = 0x4B48434D
REPLY = 1
VERSION = 1
OP = {"exists": 6, "stats": 10, "ping": 11, "get_pin": 4, "hello": 1, "auth_challenge": 64, "auth": 65,
      "peer_put": 66, "peer_get": 67, "view": 68, "error": 255}
ERR = {"version": 1, "bad_frame": 2, "unknown_op": 4, "too_many": 7, "auth": 32, "local_only": 33}


def frame(op: int, body: bytes = b"", *, version: int = VERSION, request_id: int = 1, flags: int = 0,
          body_len: int | None = None) -> bytes:
    return HEADER.pack(MAGIC, version, op, request_id, flags, len(body) if body_len is None else body_len) + body


def lp(b: bytes) -> bytes:
    return struct.pack("<I", len(b)) + b


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def recv_frame(sock: socket.socket, max_body: int = 1 << 26) -> tuple[tuple, bytes]:
    h = HEADER.unpack(recv_exact(sock, HEADER.size))
    assert h[0] == MAGIC and h[5] <= max_body, h
    return h, recv_exact(sock, h[5])


def error_code(body: bytes) -> int:
    return struct.unpack_from("<i", body)[0]


def connect(port: int, host: str = "127.0.0.1", timeout: float = 2.0) -> socket.socket:
    s = socket.create_connection((host, port), timeout=timeout)
    s.settimeout(timeout)
    return s


def challenge(sock: socket.socket) -> tuple[int, int, bytes, str]:
    h, body = recv_frame(sock, 4096)
    assert h[2] == OP["auth_challenge"] and h[4] & REPLY, h
    lo, hi = struct.unpack_from("<HH", body)
    nonce_s = body[4:36]
    (n,) = struct.unpack_from("<I", body, 36)
    return lo, hi, nonce_s, body[40:40 + n].decode()


def client_mac(secret: bytes, version: int, nonce_s: bytes, nonce_c: bytes) -> bytes:
    return hmac.new(secret, b"mch-client" + struct.pack("<H", version) + nonce_s + nonce_c, hashlib.sha256).digest()


def server_mac(secret: bytes, version: int, nonce_c: bytes, nonce_s: bytes, node_id: str) -> bytes:
    return hmac.new(secret, b"mch-server" + struct.pack("<H", version) + nonce_c + nonce_s + node_id.encode(),
                    hashlib.sha256).digest()


def auth_frame(secret: bytes, nonce_s: bytes, *, version: int = VERSION, mac: bytes | None = None) -> tuple[bytes, bytes]:
    nonce_c = os.urandom(32)
    mac = client_mac(secret, version, nonce_s, nonce_c) if mac is None else mac
    body = struct.pack("<HH", version, 0) + nonce_c + mac + lp(b"peer_wire test")
    return frame(OP["auth"], body, version=version), nonce_c


def authenticate(port: int, secret: bytes) -> socket.socket:
    """A connection that passed the handshake (and checked the node's proof)."""
    s = connect(port)
    _, _, nonce_s, node_id = challenge(s)
    f, nonce_c = auth_frame(secret, nonce_s)
    s.sendall(f)
    h, body = recv_frame(s, 4096)
    assert h[2] == OP["auth"], (h, body)
    assert hmac.compare_digest(body[:32], server_mac(secret, VERSION, nonce_c, nonce_s, node_id))
    return s


def keys_body(keys: list[str]) -> bytes:
    return struct.pack("<I", len(keys)) + b"".join(lp(k.encode()) for k in keys)


def put_body(items: list[tuple[str, bytes]]) -> bytes:
    table = struct.pack("<BBHI", 0, 0, 0, len(items)) + b"".join(
        lp(k.encode()) + struct.pack("<QI", len(v), 0) for k, v in items)
    return struct.pack("<I", len(table)) + table + b"".join(v for _, v in items)


def get_body(keys: list[str], capacity: int) -> bytes:
    return struct.pack("<BBHI", 0, 0, 0, len(keys)) + b"".join(lp(k.encode()) + struct.pack("<Q", capacity)
                                                                for k in keys)
