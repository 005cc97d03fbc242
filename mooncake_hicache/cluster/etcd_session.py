"""The etcd calls membership needs, over etcd's v3 JSON gateway (the ``etcd3gw`` client).

``EtcdSession`` wraps one ``etcd3gw`` client per endpoint and moves to the next endpoint when
one fails. It offers exactly what ``EtcdMembership`` uses: grant / keep alive / revoke a lease,
create a key only if absent (a transaction on ``create_revision == 0``), read a prefix together
with the store revision, and a watch stream.

The watch is read here rather than through ``etcd3gw.Watcher``: that class drops the stream's
errors, cancellations and compaction notices inside its worker thread, while membership must
see each of them to re-read the prefix. ``WatchStream`` yields the gateway's messages one by one
and raises ``WatchCompacted`` or ``WatchFailed``; ``abort()`` (from any thread) wakes a reader
blocked on the socket.

Keys and values travel base64-encoded; int64 fields arrive as strings. Thread-safety: every
method may be called from any thread; the watch uses a client (HTTP session) of its own.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
from typing import Any, Iterator, Optional

log = logging.getLogger("mooncake_hicache.cluster")

__all__ = ["EtcdSession", "EtcdUnreachable", "WatchCompacted", "WatchFailed", "WatchStream"]


class EtcdUnreachable(Exception):
    """No endpoint answered (connection refused or timed out, or etcd not ready)."""


class WatchFailed(Exception):
    """The watch stream broke, ended or was cancelled by etcd."""


class WatchCompacted(WatchFailed):
    """etcd cancelled the watch: its start revision has been compacted away."""

    def __init__(self, compact_revision: int):
        super().__init__(f"watch start revision compacted (compact revision {compact_revision})")
        self.compact_revision = compact_revision


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end and end[-1] == 0xFF:
        end.pop()
    if not end:
        return b"\0"  # every key
    end[-1] += 1
    return bytes(end)


class EtcdSession:
    """Calls to an etcd cluster through one of its ``endpoints`` (``http://host:port``)."""

    def __init__(self, endpoints: list[str], timeout_s: float):
        import etcd3gw  # imported here: only nodes talk to etcd
        from urllib.parse import urlsplit

        self._etcd3gw = etcd3gw
        self.timeout_s = timeout_s
        self._endpoints = list(endpoints)
        self._clients = []
        for endpoint in endpoints:
            url = urlsplit(endpoint)
            # api_path fixed to /v3/ (etcd >= 3.4): no version discovery round trip per client.
            self._clients.append(etcd3gw.client(host=url.hostname, port=url.port, protocol=url.scheme,
                                                timeout=timeout_s, api_path="/v3/"))
        self._lock = threading.Lock()  # guards _current
        self._current = 0

    @property
    def etcd_errors(self) -> type:
        """The base class of the errors etcd answers with (``etcd3gw.exceptions.Etcd3Exception``)."""
        return self._etcd3gw.exceptions.Etcd3Exception

    @property
    def endpoint(self) -> str:
        """The endpoint in use now."""
        return self._endpoints[self._current]

    # ---- plumbing ----------------------------------------------------------------------------

    def _call(self, fn) -> Any:
        """``fn(client)`` on the current endpoint, then on each other one; raises
        ``EtcdUnreachable`` when none answers. Other etcd errors propagate."""
        errors = []
        for _ in range(len(self._clients)):
            with self._lock:
                index = self._current
            try:
                return fn(self._clients[index])
            except self._unreachable_errors() as e:
                errors.append(f"{self._endpoints[index]}: {type(e).__name__}")
                with self._lock:
                    if self._current == index:
                        self._current = (index + 1) % len(self._clients)
        raise EtcdUnreachable("no etcd endpoint answered (" + "; ".join(errors) + ")")

    def _unreachable_errors(self) -> tuple:
        import requests
        exc = self._etcd3gw.exceptions
        return (exc.ConnectionFailedError, exc.ConnectionTimeoutError, exc.InternalServerError,
                requests.RequestException, OSError)

    def _post(self, path: str, body: dict) -> dict:
        return self._call(lambda c: c.post(c.get_url(path), json=body))

    # ---- leases ------------------------------------------------------------------------------

    def grant(self, ttl_s: int) -> int:
        """A new lease of ``ttl_s`` seconds; returns its id."""
        return self._call(lambda c: c.lease(ttl_s)).id

    def keepalive(self, lease_id: int) -> int:
        """Refresh a lease; returns its TTL, or -1 when etcd no longer knows it (expired, revoked)."""
        lease = self._etcd3gw.Lease

        def refresh(client) -> int:
            try:
                return lease(lease_id, client=client).refresh()
            except KeyError:  # an answer without a result: etcd does not know the lease
                return -1
        return self._call(refresh)

    def revoke(self, lease_id: int) -> None:
        """Revoke a lease: every key attached to it is deleted at once."""
        self._post("/kv/lease/revoke", {"ID": lease_id})

    def lease_ttl(self, lease_id: int) -> tuple[int, int]:
        """``(remaining TTL, granted TTL)`` of a lease; remaining is -1 once it is gone."""
        result = self._post("/kv/lease/timetolive", {"ID": lease_id})
        return int(result.get("TTL", -1)), int(result.get("grantedTTL", 0))

    # ---- keys --------------------------------------------------------------------------------

    def create(self, key: bytes, value: bytes, lease_id: int) -> Optional[dict]:
        """Put ``key`` attached to the lease if it does not exist (``create_revision == 0``).
        Returns None on success, else the existing key-value (``lease`` and ``value`` decoded)."""
        txn = {
            "compare": [{"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
            "success": [{"request_put": {"key": b64(key), "value": b64(value), "lease": lease_id}}],
            "failure": [{"request_range": {"key": b64(key)}}],
        }
        result = self._call(lambda c: c.transaction(txn))
        if result.get("succeeded"):
            return None
        kvs = result["responses"][0]["response_range"].get("kvs", [])
        if not kvs:
            return {"value": b"", "lease": 0}  # deleted meanwhile: the caller retries
        return {"value": unb64(kvs[0].get("value", "")), "lease": int(kvs[0].get("lease", 0))}

    def read_prefix(self, prefix: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
        """``(revision, [(key, value), ...])``: every key under ``prefix`` at one revision."""
        result = self._post("/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        pairs = [(unb64(kv["key"]), unb64(kv.get("value", ""))) for kv in result.get("kvs", [])]
        return int(result["header"]["revision"]), pairs

    def compact(self, revision: int) -> None:
        """Compact the key history up to ``revision`` (tests and tools)."""
        self._post("/kv/compaction", {"revision": revision, "physical": True})

    def put(self, key: bytes, value: bytes) -> None:
        self._post("/kv/put", {"key": b64(key), "value": b64(value)})

    # ---- watch -------------------------------------------------------------------------------

    def watch(self, prefix: bytes, start_revision: int) -> "WatchStream":
        """A stream of changes under ``prefix`` from ``start_revision`` on."""
        errors = []
        for _ in range(len(self._clients)):
            endpoint = self.endpoint
            try:
                return WatchStream(self._clients[self._current].get_url("/watch"), prefix, start_revision,
                                   self.timeout_s)
            except (WatchFailed, OSError) as e:
                errors.append(f"{endpoint}: {e}")
                with self._lock:
                    self._current = (self._current + 1) % len(self._clients)
        raise EtcdUnreachable("no etcd endpoint accepted a watch (" + "; ".join(errors) + ")")


def _stream_errors() -> tuple:
    import requests
    import urllib3
    # AttributeError: the response was closed under the reader by abort().
    return (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError, AttributeError)


class WatchStream:
    """One open watch (``POST /v3/watch``, a stream of JSON lines) on its own HTTP session.
    ``messages()`` is read by one thread; ``abort()`` may be called from any thread."""

    def __init__(self, url: str, prefix: bytes, start_revision: int, connect_timeout_s: float):
        import requests

        self._session = requests.Session()
        body = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                   "start_revision": start_revision}}
        try:
            self._response = self._session.post(url, json=body, stream=True,
                                                timeout=(connect_timeout_s, None))
        except requests.RequestException as e:
            self._session.close()
            raise WatchFailed(f"cannot open the watch: {type(e).__name__}") from None
        if self._response.status_code != 200:
            self.abort()
            raise WatchFailed(f"etcd refused the watch: HTTP {self._response.status_code}")

    def messages(self) -> Iterator[dict]:
        """The ``result`` of each message; ends by raising ``WatchCompacted`` or ``WatchFailed``."""
        stream_errors = _stream_errors()
        buffer = b""
        try:
            for chunk in self._response.iter_content(chunk_size=None):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield self._result(json.loads(line))
        except WatchFailed:
            raise
        except stream_errors as e:
            raise WatchFailed(f"watch stream broke: {type(e).__name__}") from None
        raise WatchFailed("etcd closed the watch stream")

    @staticmethod
    def _result(message: dict) -> dict:
        if "error" in message:
            raise WatchFailed(f"etcd reported a watch error: {message['error'].get('message', '?')}")
        result = message.get("result", {})
        if int(result.get("compact_revision", 0) or 0) > 0:
            raise WatchCompacted(int(result["compact_revision"]))
        if result.get("canceled"):
            raise WatchFailed(f"etcd cancelled the watch: {result.get('cancel_reason', 'no reason given')}")
        return result

    def abort(self) -> None:
        """Close the stream; a thread blocked in ``messages()`` wakes up with ``WatchFailed``."""
        try:
            fd = self._response.raw.fileno()
            sock = socket.socket(fileno=socket.dup(fd))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()
        except (OSError, ValueError, AttributeError):
            pass  # already closed
        self._response.close()
        self._session.close()
