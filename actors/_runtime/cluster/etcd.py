"""A small etcd v3 client: what the cluster needs from etcd, over etcd's JSON gateway, with the standard library.

etcd holds the cluster's membership, names, leases and election; this module is the only place that speaks to it.
etcd (3.4 and later) serves its gRPC API as JSON over HTTP/1.1 at `/v3/...` on the client port, with keys and values
in base64 and 64-bit integers as strings. Each call is one short HTTP/1.1 exchange over trio's own sockets, not
`http.client` in a worker thread: a watch is a response that never ends, and only a socket that trio owns can be
cancelled at once when the node stops, without a thread left blocked in `recv`. Unary calls open a connection each
(`Connection: close`): these are control-plane calls, a few a second at most, and no pool means nothing to go stale.

Every failure is a `ClusterError` that says what and where, and how to fix it.
"""
from __future__ import annotations

import base64
import json
import math
import os
from dataclasses import dataclass
from typing import AsyncIterator, Iterable, Optional, Union
from urllib.parse import urlsplit

import trio

from actors._exceptions import ClusterError

Key = Union[str, bytes]

DEFAULT_PORT = 2379

#: What a connection to etcd raises when etcd goes away in the middle of an exchange: a reset reaches trio's
#: streams as BrokenResourceError, not as the OSError it began as.
_BROKEN = (OSError, EOFError, trio.BrokenResourceError, trio.ClosedResourceError)


def parse_cluster_url(url: str) -> tuple[str, int]:
    """`etcd://HOST:PORT` (port 2379 when left out) -> (host, port); a bracketed IPv6 host loses its brackets."""
    parts = urlsplit(url)
    if parts.scheme != "etcd" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ClusterError(f"bad cluster address {url!r}: expected etcd://HOST:PORT, e.g. etcd://10.0.0.5:2379")
    try:
        port = parts.port
    except ValueError:
        raise ClusterError(f"bad cluster address {url!r}: the port must be a number from 1 to 65535") from None
    return parts.hostname, port or DEFAULT_PORT


def _raw(key: Key) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def prefix_end(prefix: Key) -> bytes:
    """The `range_end` that makes a range cover every key starting with `prefix` (etcd's convention: the prefix with
    its last byte below 0xff incremented; b"\\0" means "to the end" for an empty or all-0xff prefix)."""
    raw = bytearray(_raw(prefix))
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"
    raw[-1] += 1
    return bytes(raw)


def _reason(exc: OSError) -> str:
    """The system's word for a failed connect ("Connection refused"): trio wraps each attempt's error in one
    "all attempts to connect ... failed"."""
    first = (getattr(exc.__cause__, "exceptions", None) or [exc])[0]
    return os.strerror(first.errno) if isinstance(first, OSError) and first.errno else str(exc)


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd holds it. `lease` is 0 for a key bound to no lease."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def _from_json(cls, kv: dict) -> "KeyValue":
        # The gateway leaves out every field whose value is zero or empty.
        return cls(
            key=base64.b64decode(kv.get("key", "")),
            value=base64.b64decode(kv.get("value", "")),
            create_revision=int(kv.get("create_revision", 0)),
            mod_revision=int(kv.get("mod_revision", 0)),
            version=int(kv.get("version", 0)),
            lease=int(kv.get("lease", 0)),
        )


@dataclass(frozen=True)
class Range:
    """The keys under a prefix and the store's revision they were read at: watch from `revision + 1` to miss no
    change that follows."""

    kvs: list
    revision: int


@dataclass(frozen=True)
class Created:
    """The outcome of a create-if-absent: `won` is True when this call created the key; `holder` is the key as it
    stands, this caller's or the one that was there first."""

    won: bool
    holder: KeyValue


@dataclass(frozen=True)
class WatchEvent:
    """A change under a watched prefix. `kind` is "put" or "delete"; a deleted key's `kv` has only its key and
    `mod_revision` (the revision of the deletion)."""

    kind: str
    kv: KeyValue


class _HTTPResponse:
    """The reading side of one HTTP/1.1 exchange: status, headers, then the body as etcd sends it (a length, chunks,
    or until the connection closes)."""

    def __init__(self, stream: trio.abc.Stream):
        self._stream = stream
        self._buffer = bytearray()
        self._eof = False
        self.status = 0
        self._length: Optional[int] = None
        self._chunked = False

    async def _fill(self) -> bool:
        data = await self._stream.receive_some(65536)
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    async def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 2]
                return line
            if not await self._fill():
                raise EOFError

    async def _exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if not await self._fill():
                raise EOFError
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def read_head(self) -> None:
        status = await self._line()
        self.status = int(status.split(b" ", 2)[1])
        while True:
            line = await self._line()
            if not line:
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self._length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = True

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body, piece by piece, as it arrives."""
        if self._chunked:
            while True:
                size = int((await self._line()).split(b";")[0], 16)
                if size == 0:
                    return
                yield await self._exactly(size)
                await self._line()
        elif self._length is not None:
            yield await self._exactly(self._length)
        else:
            while self._buffer or await self._fill():
                data = bytes(self._buffer)
                self._buffer.clear()
                yield data


class Etcd:
    """A client of one etcd endpoint, for trio. It holds no connection between calls; a `Watch` holds its own."""

    def __init__(self, url: str, *, timeout: float = 5.0):
        self.url = url
        self.host, self.port = parse_cluster_url(url)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Etcd({self.url!r})"

    # -- transport ---------------------------------------------------------------------------------------------------

    def _where(self) -> str:
        return f"etcd at {self.host}:{self.port}"

    async def _connect(self) -> trio.SocketStream:
        try:
            with trio.fail_after(self.timeout):
                return await trio.open_tcp_stream(self.host, self.port)
        except (OSError, trio.TooSlowError) as exc:
            why = "no answer" if isinstance(exc, trio.TooSlowError) else _reason(exc)
            raise ClusterError(
                f"cannot reach {self._where()}: {why}; start etcd or check --cluster") from None

    async def facing_address(self) -> str:
        """This machine's address on the network that reaches etcd: where the other nodes can reach it too."""
        stream = await self._connect()
        try:
            return stream.socket.getsockname()[0]
        finally:
            await stream.aclose()

    async def _open(self, path: str, body: dict) -> tuple[trio.SocketStream, _HTTPResponse]:
        """Send one POST and read the response's head; the caller reads the body and closes the stream."""
        payload = json.dumps(body).encode()
        stream = await self._connect()
        try:
            await stream.send_all(
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
            response = _HTTPResponse(stream)
            await response.read_head()
        except BaseException as exc:
            await trio.aclose_forcefully(stream)
            if isinstance(exc, _BROKEN + (ValueError, IndexError)):
                raise ClusterError(f"{self._where()} closed the connection during {path}; check that it is "
                                   f"healthy (etcdctl endpoint health)") from None
            raise
        return stream, response

    def _refused(self, path: str, status: int, answer) -> ClusterError:
        message = answer.get("message") or answer.get("error") if isinstance(answer, dict) else None
        return ClusterError(f"{self._where()} refused {path}: {message or f'HTTP status {status}'}")

    async def _call(self, path: str, body: dict, *, first_of_stream: bool = False) -> dict:
        """One request and its JSON answer. `first_of_stream` takes the first message of a streamed answer (etcd's
        keep-alive is a stream, even for one renewal)."""
        try:
            with trio.fail_after(self.timeout):
                stream, response = await self._open(path, body)
                try:
                    body_bytes = bytearray()
                    async for piece in response.pieces():
                        body_bytes += piece
                        if first_of_stream and b"\n" in body_bytes:
                            break
                finally:
                    await trio.aclose_forcefully(stream)
        except trio.TooSlowError:
            raise ClusterError(f"{self._where()} did not answer {path} within {self.timeout:g} s; check that it "
                               f"is healthy (etcdctl endpoint health)") from None
        except _BROKEN:
            raise ClusterError(f"{self._where()} closed the connection during {path}; check that it is healthy "
                               f"(etcdctl endpoint health)") from None
        text = bytes(body_bytes).split(b"\n", 1)[0] if first_of_stream else bytes(body_bytes)
        try:
            answer = json.loads(text) if text.strip() else {}
        except ValueError:
            raise ClusterError(f"{self._where()} answered {path} with something other than JSON; is "
                               f"{self.host}:{self.port} an etcd client port (3.4 or later)?") from None
        if response.status != 200:
            raise self._refused(path, response.status, answer)
        if first_of_stream:
            if "error" in answer:
                raise self._refused(path, response.status, answer["error"])
            answer = answer.get("result", {})
        return answer

    # -- keys --------------------------------------------------------------------------------------------------------

    async def put(self, key: Key, value: Key, *, lease: int = 0) -> int:
        """Set `key` (bound to `lease` when given: it goes when the lease does); the store's new revision."""
        body = {"key": _b64(_raw(key)), "value": _b64(_raw(value))}
        if lease:
            body["lease"] = str(lease)
        answer = await self._call("/v3/kv/put", body)
        return int(answer["header"]["revision"])

    async def get(self, key: Key) -> Optional[KeyValue]:
        """The key, or None when it does not exist."""
        answer = await self._call("/v3/kv/range", {"key": _b64(_raw(key))})
        kvs = answer.get("kvs", [])
        return KeyValue._from_json(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: Key) -> Range:
        """Every key starting with `prefix`, in key order, and the revision they were read at."""
        answer = await self._call(
            "/v3/kv/range", {"key": _b64(_raw(prefix)), "range_end": _b64(prefix_end(prefix))})
        return Range([KeyValue._from_json(kv) for kv in answer.get("kvs", [])], int(answer["header"]["revision"]))

    async def delete(self, key: Key) -> int:
        """Delete `key`; how many keys went (0 or 1)."""
        answer = await self._call("/v3/kv/deleterange", {"key": _b64(_raw(key))})
        return int(answer.get("deleted", 0))

    async def delete_prefix(self, prefix: Key) -> int:
        """Delete every key starting with `prefix`; how many went."""
        answer = await self._call(
            "/v3/kv/deleterange", {"key": _b64(_raw(prefix)), "range_end": _b64(prefix_end(prefix))})
        return int(answer.get("deleted", 0))

    async def create(self, key: Key, value: Key, *, lease: int = 0) -> Created:
        """Create `key` only if it does not exist, in one transaction: of any number of racing creators exactly one
        wins. Bound to `lease`, the key is released when its holder's lease ends (a node that dies frees its
        names)."""
        raw = _b64(_raw(key))
        put = {"key": raw, "value": _b64(_raw(value))}
        if lease:
            put["lease"] = str(lease)
        answer = await self._call("/v3/kv/txn", {
            # create_revision == 0 holds only for a key that does not exist.
            "compare": [{"key": raw, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": put}],
            "failure": [{"request_range": {"key": raw}}],
        })
        if answer.get("succeeded"):
            revision = int(answer["header"]["revision"])
            return Created(True, KeyValue(_raw(key), _raw(value), revision, revision, 1, lease))
        kvs = answer["responses"][0]["response_range"].get("kvs", [])
        return Created(False, KeyValue._from_json(kvs[0]))

    async def delete_created(self, key: Key, create_revision: int) -> bool:
        """Delete `key` only if it is the one created at `create_revision` (not a later holder's); True if it
        went."""
        raw = _b64(_raw(key))
        answer = await self._call("/v3/kv/txn", {
            "compare": [{"key": raw, "target": "CREATE", "result": "EQUAL",
                         "create_revision": str(create_revision)}],
            "success": [{"request_delete_range": {"key": raw}}],
        })
        return bool(answer.get("succeeded"))

    # -- leases ------------------------------------------------------------------------------------------------------

    async def grant(self, ttl: float) -> "Lease":
        """A new lease of `ttl` seconds (whole seconds; etcd may raise a very short TTL to its minimum)."""
        sent = trio.current_time()
        answer = await self._call("/v3/lease/grant", {"TTL": str(max(1, math.ceil(ttl)))})
        return Lease(self, int(answer["ID"]), int(answer["TTL"]), sent)

    async def refresh(self, lease_id: int) -> int:
        """Renew a lease once; its TTL from now. Raises `ClusterError` when the lease has already ended."""
        answer = await self._call("/v3/lease/keepalive", {"ID": str(lease_id)}, first_of_stream=True)
        ttl = int(answer.get("TTL", 0))
        if ttl <= 0:
            raise ClusterError(f"lease {lease_id:x} has expired or was revoked in {self._where()}; the keys bound "
                               f"to it are gone: register again under a new lease")
        return ttl

    async def time_to_live(self, lease_id: int) -> int:
        """A lease's remaining seconds, or -1 when it has ended."""
        answer = await self._call("/v3/lease/timetolive", {"ID": str(lease_id)})
        return int(answer.get("TTL", -1))

    async def revoke(self, lease_id: int) -> None:
        """End a lease now: every key bound to it goes at once. Revoking an ended lease is not an error."""
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease_id)})
        except ClusterError as exc:
            if "lease not found" not in str(exc):
                raise

    # -- watch and election ------------------------------------------------------------------------------------------

    def watch(self, key: Key, *, prefix: bool = False, start_revision: int = 0) -> "Watch":
        """Changes to `key` (or to every key under it, with `prefix=True`) from `start_revision` on (0: from now).
        Use as `async with etcd.watch(...) as events: async for event in events: ...`."""
        return Watch(self, _raw(key), prefix, start_revision)

    async def wait_deleted(self, key: Key, *, after_revision: int) -> int:
        """Wait until `key` is deleted (or expires with its lease) at a revision later than `after_revision`; the
        revision of the deletion. Watching from `after_revision + 1` misses no deletion that happened in between."""
        async with self.watch(key, start_revision=after_revision + 1) as events:
            async for event in events:
                if event.kind == "delete":
                    return event.kv.mod_revision
        raise ClusterError(f"{self._where()} ended the watch on {_raw(key)!r}; check that it is healthy")

    async def campaign(self, key: Key, value: Key, *, lease: int) -> KeyValue:
        """Return once this candidate leads: it has created `key`, bound to its `lease`. While another holds it, wait
        for that key to go (its holder resigned, or its lease ended) and try again. At most one candidate leads at a
        time; a leader that loses its lease stops leading when its key goes."""
        while True:
            outcome = await self.create(key, value, lease=lease)
            if outcome.won:
                return outcome.holder
            if outcome.holder.lease == lease:
                # Our own key from an earlier campaign on the same lease: we already lead.
                return outcome.holder
            await self.wait_deleted(key, after_revision=outcome.holder.mod_revision)

    async def resign(self, key: Key, *, lease: int) -> bool:
        """Give up leading: delete `key` only if it is still bound to `lease` (never another leader's key)."""
        raw = _b64(_raw(key))
        answer = await self._call("/v3/kv/txn", {
            "compare": [{"key": raw, "target": "LEASE", "result": "EQUAL", "lease": str(lease)}],
            "success": [{"request_delete_range": {"key": raw}}],
        })
        return bool(answer.get("succeeded"))


class Lease:
    """A lease granted by etcd: keys bound to it live as long as it is renewed. `keep_alive` renews it until
    cancelled; `revoke` ends it at once."""

    def __init__(self, etcd: Etcd, lease_id: int, ttl: int, sent: float):
        self.etcd = etcd
        self.id = lease_id
        self.ttl = ttl
        self.sent = sent        # when the grant was asked for: it cannot run out before sent + ttl

    def __repr__(self) -> str:
        return f"Lease({self.id:x}, ttl={self.ttl})"

    async def keep_alive(self, *, margin: float = 0.0, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Renew the lease every third of its TTL, until cancelled. A renewal that fails is retried until `margin`
        seconds before the lease could run out; then (or when etcd says the lease has ended) this raises
        `ClusterError`, so that the holder stops acting on keys it no longer owns, `margin` seconds before anyone
        else may take them. (The lease runs out `ttl` after etcd received the last renewal, which was after it was
        sent: counting from the send errs on the safe side.)"""
        expires = self.sent + self.ttl
        task_status.started()
        while True:
            await trio.sleep_until(min(expires - margin, trio.current_time() + self.ttl / 3))
            while True:
                try:
                    sent = trio.current_time()
                    # Never wait for an answer past the deadline: by then the lease is lost either way.
                    with trio.move_on_after(max(0.0, expires - margin - sent)):
                        ttl = await self.etcd.refresh(self.id)
                        expires = sent + ttl
                        break
                except ClusterError as exc:
                    if "has expired or was revoked" in str(exc):
                        raise
                if trio.current_time() >= expires - margin:
                    raise ClusterError(
                        f"lease {self.id:x} ran out: {self.etcd._where()} could not be reached to renew it within "
                        f"its {self.ttl} s TTL{f' (less a margin of {margin:g} s)' if margin else ''}; stop acting "
                        f"on the keys bound to it and register again")
                await trio.sleep(min(0.2, max(0.0, expires - margin - trio.current_time())))

    async def revoke(self) -> None:
        await self.etcd.revoke(self.id)

    async def time_to_live(self) -> int:
        return await self.etcd.time_to_live(self.id)


class Watch:
    """One watch stream: an HTTP response that etcd keeps open, one JSON message a line. Iterating it yields
    `WatchEvent`s; leaving the `async with` closes the connection."""

    def __init__(self, etcd: Etcd, key: bytes, prefix: bool, start_revision: int):
        self.etcd = etcd
        self.key = key
        self._request = {"key": _b64(key)}
        if prefix:
            self._request["range_end"] = _b64(prefix_end(key))
        if start_revision:
            self._request["start_revision"] = str(start_revision)
        self._stream: Optional[trio.SocketStream] = None
        self._response: Optional[_HTTPResponse] = None

    async def __aenter__(self) -> "Watch":
        try:
            with trio.fail_after(self.etcd.timeout):
                self._stream, self._response = await self.etcd._open("/v3/watch", {"create_request": self._request})
        except trio.TooSlowError:
            raise ClusterError(f"{self.etcd._where()} did not answer /v3/watch within {self.etcd.timeout:g} s; "
                               f"check that it is healthy (etcdctl endpoint health)") from None
        if self._response.status != 200:
            await trio.aclose_forcefully(self._stream)
            raise ClusterError(f"{self.etcd._where()} refused /v3/watch: HTTP status {self._response.status}")
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._stream is not None:
            await trio.aclose_forcefully(self._stream)
            self._stream = None

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[WatchEvent]:
        buffer = bytearray()
        try:
            async for piece in self._response.pieces():
                buffer += piece
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[:end + 1]
                    if line.strip():
                        for event in self._parse(json.loads(line)):
                            yield event
        except _BROKEN:
            pass
        raise ClusterError(f"{self.etcd._where()} closed the watch on {self.key!r}; check that it is healthy, "
                           f"then watch again from the last revision seen")

    def _parse(self, message: dict) -> Iterable[WatchEvent]:
        if "error" in message:
            raise self.etcd._refused("/v3/watch", 200, message["error"])
        result = message.get("result", {})
        if int(result.get("compact_revision", 0)):
            raise ClusterError(
                f"cannot watch {self.key!r} from revision {self._request.get('start_revision')}: {self.etcd._where()} "
                f"has compacted its history up to revision {result['compact_revision']}; read the keys again and "
                f"watch from the revision of that read")
        if result.get("canceled"):
            raise ClusterError(f"{self.etcd._where()} cancelled the watch on {self.key!r}: "
                               f"{result.get('cancel_reason') or 'no reason given'}")
        return [WatchEvent("delete" if event.get("type") == "DELETE" else "put", KeyValue._from_json(event["kv"]))
                for event in result.get("events", [])]
