"""The etcd client against a real etcd: keys, leases, create-if-absent under a race between hosts, watches, election,
and the simulated hosts' isolation. Hosts are network namespaces with a private /dev/shm each (tests/_helpers/cluster.py)."""
import os
import subprocess
import sys
import time

import pytest
import trio

from actors._exceptions import ClusterError
from actors._runtime.cluster.etcd import Etcd, parse_cluster_url, prefix_end

from _helpers.cluster import (  # noqa: F401 (fixtures)
    EtcdServer,
    SimulatedHosts,
    cluster_hosts,
    etcd_server,
    leftovers,
    read_first,
    require_etcd,
    require_namespaces,
)

TTL = 2  # etcd's shortest lease, with its default timings

_run = trio.run


def run(async_fn, *args, timeout=20.0):
    """`trio.run` with a deadline, so that no test hangs on etcd."""
    async def guarded():
        with trio.fail_after(timeout):
            return await async_fn(*args)
    return _run(guarded)


@pytest.fixture
def etcd(etcd_server):
    return Etcd(etcd_server.url)


# -- addresses and errors -----------------------------------------------------------------------------------------------


def test_cluster_urls():
    assert parse_cluster_url("etcd://10.0.0.5:2379") == ("10.0.0.5", 2379)
    assert parse_cluster_url("etcd://etcd.local") == ("etcd.local", 2379)
    assert parse_cluster_url("etcd://[::1]:2400") == ("::1", 2400)
    for bad in ("http://10.0.0.5:2379", "etcd://", "10.0.0.5:2379", "etcd://h:2379/path"):
        with pytest.raises(ClusterError, match="^bad cluster address .*: expected etcd://HOST:PORT, e.g. "):
            parse_cluster_url(bad)
    with pytest.raises(ClusterError, match="the port must be a number from 1 to 65535"):
        parse_cluster_url("etcd://h:99999")


def test_prefix_end():
    assert prefix_end("a/") == b"a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"") == b"\0"


def test_unreachable_etcd_says_what_and_the_fix():
    from _helpers.cluster import free_port
    port = free_port()      # nothing listens there
    with pytest.raises(ClusterError, match=rf"^cannot reach etcd at 127\.0\.0\.1:{port}: Connection refused; start etcd or check "
                                           rf"--cluster$"):
        run(Etcd(f"etcd://127.0.0.1:{port}", timeout=2).get, "k")


def test_etcd_resetting_the_connection_mid_request_says_so():
    # etcd killed while it holds a request resets the connection: trio reports that as BrokenResourceError, which
    # must reach the caller as the ClusterError its retry loops catch, not crash the node
    import socket
    import struct
    import threading
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def reset_after_the_request():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                assert chunk, "the client closed the connection before its request was whole"
                request += chunk
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # close with a reset
    thread = threading.Thread(target=reset_after_the_request, daemon=True)
    thread.start()
    try:
        with pytest.raises(ClusterError, match=rf"^etcd at 127\.0\.0\.1:{port} closed the connection during "
                                               rf"/v3/kv/range; check that it is healthy"):
            run(Etcd(f"etcd://127.0.0.1:{port}", timeout=5).get, "k")
    finally:
        thread.join(10)
        listener.close()


# -- keys and leases ----------------------------------------------------------------------------------------------------


def test_put_get_range_delete(etcd):

    async def main():
        first = await etcd.put("kv/a", "1")
        second = await etcd.put(b"kv/b", b"\x00\xff")
        await etcd.put("kv0", "outside the prefix")
        assert second > first
        a = await etcd.get("kv/a")
        assert (a.key, a.value, a.version, a.lease) == (b"kv/a", b"1", 1, 0)
        assert a.create_revision == a.mod_revision == first
        assert await etcd.get("kv/none") is None
        await etcd.put("kv/a", "2")
        assert (await etcd.get("kv/a")).version == 2
        listing = await etcd.get_prefix("kv/")
        assert [(kv.key, kv.value) for kv in listing.kvs] == [(b"kv/a", b"2"), (b"kv/b", b"\x00\xff")]
        assert listing.revision >= second + 1
        assert await etcd.delete("kv/a") == 1
        assert await etcd.delete("kv/a") == 0
        assert await etcd.delete_prefix("kv/") == 1
        assert (await etcd.get_prefix("kv/")).kvs == []
        assert (await etcd.get("kv0")).value == b"outside the prefix"
        await etcd.delete("kv0")

    run(main)


def test_a_lease_expires_and_its_keys_go(etcd):

    async def main():
        lease = await etcd.grant(TTL)
        revision = await etcd.put("expiry/k", "v", lease=lease.id)
        assert (await etcd.get("expiry/k")).lease == lease.id
        started = trio.current_time()
        with trio.fail_after(TTL + 1):
            await etcd.wait_deleted("expiry/k", after_revision=revision)
        assert trio.current_time() - started >= TTL - 1     # it expired, not vanished at once
        assert await etcd.get("expiry/k") is None
        assert await lease.time_to_live() == -1
        with pytest.raises(ClusterError, match=f"^lease {lease.id:x} has expired or was revoked in etcd at "):
            await etcd.refresh(lease.id)
        with pytest.raises(ClusterError, match="refused /v3/kv/put: etcdserver: requested lease not found$"):
            await etcd.put("expiry/k", "v", lease=lease.id)

    run(main)


def test_keep_alive_keeps_the_keys_and_revoke_ends_them(etcd):

    async def main():
        lease = await etcd.grant(TTL)
        revision = await etcd.put("alive/k", "v", lease=lease.id)
        async with trio.open_nursery() as nursery:
            await nursery.start(lease.keep_alive)
            # Twice the TTL: without renewals the key would have gone by then.
            await trio.sleep(2 * TTL + 0.5)
            assert (await etcd.get("alive/k")).value == b"v"
            assert await lease.time_to_live() > 0
            nursery.cancel_scope.cancel()
        await lease.revoke()
        with trio.fail_after(1):
            await etcd.wait_deleted("alive/k", after_revision=revision)
        await lease.revoke()        # revoking twice is not an error

    run(main)


@pytest.mark.parametrize("margin", [0, 1.0])
def test_keep_alive_gives_up_once_etcd_is_gone_for_the_ttl_less_the_margin(margin):
    """A holder that cannot renew its lease must learn that it no longer owns its keys, `margin` seconds before the
    lease can run out in etcd (a node kills its persistent actors then: they are dead before anyone replaces
    them)."""
    server = EtcdServer(require_etcd())
    etcd = Etcd(server.url, timeout=1)

    async def main():
        sent = trio.current_time()
        lease = await etcd.grant(TTL)
        server.process.kill()
        less = f" \\(less a margin of {margin:g} s\\)" if margin else ""
        with pytest.raises(ClusterError, match=rf"^lease {lease.id:x} ran out: etcd at 127\.0\.0\.1:"
                                               rf"{server.port} could not be reached to renew it within its "
                                               rf"{TTL} s TTL{less}; stop acting on the keys bound to it and register "
                                               rf"again$"):
            await lease.keep_alive(margin=margin)
        # counted from before the grant was sent: never later than the lease can run out, less the margin
        assert trio.current_time() - sent <= TTL - margin + 0.5

    try:
        run(main)
    finally:
        server.close()


def test_create_if_absent(etcd):

    async def main():
        lease = await etcd.grant(10)
        first = await etcd.create("names/x", "node-a", lease=lease.id)
        second = await etcd.create("names/x", "node-b")
        assert first.won and not second.won
        assert second.holder == first.holder
        assert (second.holder.value, second.holder.lease) == (b"node-a", lease.id)
        await lease.revoke()
        third = await etcd.create("names/x", "node-b")
        assert third.won and third.holder.value == b"node-b"
        await etcd.delete("names/x")

    run(main)


def test_delete_created_deletes_only_that_claim(etcd):
    """A holder giving a name back must never delete the claim of whoever took the name after it."""

    async def main():
        first = await etcd.create("names/y", "a")
        await etcd.delete("names/y")
        second = await etcd.create("names/y", "b")
        assert not await etcd.delete_created("names/y", first.holder.create_revision)
        assert (await etcd.get("names/y")).value == b"b"
        assert await etcd.delete_created("names/y", second.holder.create_revision)
        assert await etcd.get("names/y") is None

    run(main)


# -- watch --------------------------------------------------------------------------------------------------------------


def test_watch_sees_puts_deletes_and_expiry(etcd):

    async def main():
        start = (await etcd.get_prefix("w/")).revision + 1
        lease = await etcd.grant(TTL)
        await etcd.put("w/a", "1")
        await etcd.put("w/leased", "2", lease=lease.id)
        await etcd.put("wx", "not under w/")
        await etcd.delete("w/a")
        seen = []
        # Everything since `start`, though the watch began after the changes: a watcher misses nothing.
        with trio.fail_after(TTL + 2):
            async with etcd.watch("w/", prefix=True, start_revision=start) as events:
                async for event in events:
                    seen.append((event.kind, event.kv.key, event.kv.value))
                    if event.kv.key == b"w/leased" and event.kind == "delete":
                        break
        assert seen == [("put", b"w/a", b"1"), ("put", b"w/leased", b"2"), ("delete", b"w/a", b""),
                        ("delete", b"w/leased", b"")]
        await etcd.delete("wx")

    run(main)


def test_watch_from_a_compacted_revision_says_so(etcd):

    async def main():
        old = await etcd.put("c/k", "1")
        revision = await etcd.put("c/k", "2")
        await etcd._call("/v3/kv/compaction", {"revision": str(revision)})
        with pytest.raises(ClusterError, match=rf"^cannot watch b'c/k' from revision {old}: etcd at .* has "
                                               rf"compacted its history up to revision {revision}; read the keys"):
            async with etcd.watch("c/k", start_revision=old) as events:
                async for _ in events:
                    pass
        await etcd.delete("c/k")

    run(main)


# -- across hosts -------------------------------------------------------------------------------------------------------

_CREATOR = """
import sys, trio
from actors._runtime.cluster.etcd import Etcd

async def main(url, me):
    etcd = Etcd(url)
    lease = await etcd.grant(30)
    print("ready", flush=True)
    while (line := await trio.to_thread.run_sync(sys.stdin.readline)):
        outcome = await etcd.create(line.split()[1], me, lease=lease.id)
        print("won" if outcome.won else "lost", outcome.holder.value.decode(), flush=True)
    await lease.revoke()

trio.run(main, *sys.argv[1:])
"""


def test_racing_creators_on_three_hosts_exactly_one_wins(cluster_hosts):
    creators = [cluster_hosts.python(host, _CREATOR, cluster_hosts.etcd_url, host) for host in cluster_hosts.hosts]
    try:
        for creator in creators:
            assert creator.read_line(timeout=20) == "ready"
        for round in range(5):
            for creator in creators:        # as close together as three pipes allow
                creator.send_line(f"go race/{round}")
            outcomes = [creator.read_line(timeout=10).split() for creator in creators]
            winners = [creator.host for creator, (verdict, _) in zip(creators, outcomes) if verdict == "won"]
            assert len(winners) == 1, outcomes
            assert {holder for _, holder in outcomes} == {winners[0]}, outcomes
        for creator in creators:
            assert creator.finish(timeout=10) == 0, creator.stderr()
    finally:
        for creator in creators:
            creator.close()


_CANDIDATE = """
import sys, trio
from actors._runtime.cluster.etcd import Etcd

async def main(url, key, me, ttl):
    etcd = Etcd(url)
    lease = await etcd.grant(int(ttl))
    async with trio.open_nursery() as nursery:
        await nursery.start(lease.keep_alive)
        print("candidate", flush=True)
        await etcd.campaign(key, me, lease=lease.id)
        print("leader", me, flush=True)
        command = await trio.to_thread.run_sync(sys.stdin.readline)
        nursery.cancel_scope.cancel()
    if command.strip() == "revoke":
        await lease.revoke()

trio.run(main, *sys.argv[1:])
"""


def test_election_moves_on_when_the_leader_resigns_or_dies(cluster_hosts):
    key = f"election/{time.monotonic_ns()}"
    candidates = [cluster_hosts.python(host, _CANDIDATE, cluster_hosts.etcd_url, key, host, TTL)
                  for host in cluster_hosts.hosts]
    try:
        for candidate in candidates:
            assert candidate.read_line(timeout=20) == "candidate"
        leader, line = read_first(candidates, timeout=10)
        assert line == f"leader {leader.host}"
        others = [c for c in candidates if c is not leader]

        # The leader's lease is revoked: its key goes at once, and one other candidate takes over.
        revoked = time.monotonic()
        leader.send_line("revoke")
        second, line = read_first(others, timeout=TTL + 1)
        assert line == f"leader {second.host}"
        assert time.monotonic() - revoked <= TTL + 1
        assert leader.finish(timeout=10) == 0, leader.stderr()
        (third,) = [c for c in others if c is not second]
        assert b"\n" not in third._buffer        # one leader at a time

        # The new leader is killed: no one revokes its lease, which must run out before the last candidate leads.
        killed = time.monotonic()
        second.kill()
        assert third.read_line(timeout=TTL + 1) == f"leader {third.host}"
        assert time.monotonic() - killed <= TTL + 1
        assert third.finish(timeout=10) == 0, third.stderr()
    finally:
        for candidate in candidates:
            candidate.close()


_SHM_MAKER = """
import sys
from multiprocessing import shared_memory

name = sys.argv[1]
segment = shared_memory.SharedMemory(name=name, create=True, size=4096)
segment.buf[:5] = b"hello"
again = shared_memory.SharedMemory(name=name)
print("made", bytes(again.buf[:5]).decode(), flush=True)
again.close()
sys.stdin.read()
segment.close()
segment.unlink()
"""

_SHM_PROBE = """
import os, sys
from multiprocessing import shared_memory

try:
    shared_memory.SharedMemory(name=sys.argv[1]).close()
    print("present", flush=True)
except FileNotFoundError:
    print("absent", sorted(os.listdir("/dev/shm")), flush=True)
"""


def test_hosts_share_no_shared_memory_and_no_addresses_with_the_machine(cluster_hosts):
    a, b = cluster_hosts.hosts[:2]
    name = f"{cluster_hosts.tag}-probe"
    maker = cluster_hosts.python(a, _SHM_MAKER, name)
    try:
        assert maker.read_line(timeout=20) == "made hello"      # host A sees its own segment
        probe = cluster_hosts.python(b, _SHM_PROBE, name)
        assert probe.read_line(timeout=20) == "absent []"      # host B sees none of A's, nor the machine's
        assert probe.finish(timeout=10) == 0
        assert not os.path.exists(f"/dev/shm/{name}")           # nor does the machine
        assert maker.finish(timeout=10) == 0, maker.stderr()
    finally:
        maker.close()
    addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert "10.213.0." not in addresses


_IMMORTAL = """
import os, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
sys.stdout.write(f"{os.getpid()}\\n"); sys.stdout.flush()
while True:
    signal.pause()
"""


def test_hosts_leave_nothing_behind():
    binary = require_etcd()
    require_namespaces()
    hosts = SimulatedHosts(2, etcd_binary=binary)
    pids = []
    try:
        sleeper = hosts.python(hosts.hosts[0], "import sys; print('up', flush=True); sys.stdin.read()")
        # a program under a wrapper shell, as the node agents and programs run, that outlives its stdin and its
        # wrapper: close must find it and kill it too
        wrapped = hosts.run(hosts.hosts[1], ["sh", "-c", f"{sys.executable} -c '{_IMMORTAL}'; echo ended"])
        pids = [hosts.etcd.pid, sleeper.pid, wrapped.pid]
        assert sleeper.read_line(timeout=20) == "up"
        pids.append(int(wrapped.read_line(timeout=20)))
        assert pids[-1] != wrapped.pid
        assert len(leftovers(hosts.tag, pids)) >= 7      # what close must remove: namespaces, dir, processes
    finally:
        hosts.close()
    assert leftovers(hosts.tag, pids) == []
