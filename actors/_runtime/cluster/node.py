"""A node of a cluster: this system's driver as one member of several, on etcd.

etcd holds what the nodes must agree on; messages never pass through it. Under the prefix `actors/`:
- `numbers/<n>`: node number n was taken by the node named in the value. Numbers are never reused (the keys stay),
  so an id minted by a node that has left never reaches a newer node.
- `nodes/<name>`: a live node (JSON: number, host, port, labels, actors, cpus), bound to the node's lease: it goes
  when the node stops, or when it dies and its lease runs out.
- `names/<actor name>`: the actor that holds the name (JSON: id, persistent), bound to its node's lease. Created
  with a transaction, so that of several nodes spawning one name at once exactly one wins.
- `classes/<wire code>`: a registered class (its pickled registry entry), for a node that meets it in a message to
  fetch on first use; no node is sent classes it never meets.

The node also serves the cluster's gateway: one TCP port, where connections from other nodes are authenticated and
then handed to the actor they are for (`actors._wire.tcp`).
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import socket

import cloudpickle
import trio

from actors._exceptions import ActorNotFoundError, ActorsError, ClusterError
from actors._ref import ActorRef
from actors._runtime.cluster.etcd import Etcd, parse_cluster_url
from actors._wire import tcp

log = logging.getLogger(__name__)

PREFIX = "actors/"
LEASE_TTL = 3           # seconds: how long a node that dies keeps its names and its place in the membership
SECRET_ENV = "ACTORS_CLUSTER_SECRET"


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """A live node of the cluster, as `system.nodes()` lists it. `actors` is how many actors it runs (placement's
    measure of load, per CPU); `here` is True for the node asking."""

    name: str
    labels: dict
    address: str
    actors: int
    cpus: int
    here: bool = False


@dataclasses.dataclass
class ClusterOptions:
    """How a system joins a cluster: `actors.run(main, cluster=...)` takes the etcd address alone, or these.

    `url` is the etcd that holds the cluster (`etcd://HOST:PORT`); `name` this node's (default HOSTNAME-PID);
    `labels` what `spawn(labels=...)` places by; `listen` where other nodes connect (`HOST:PORT`; default: this
    machine's address towards etcd, any free port); `secret` the cluster secret its nodes authenticate each other
    with (default: $ACTORS_CLUSTER_SECRET; without one, a node listens on loopback only); `lease_ttl` how long
    (whole seconds, 2 or more) a node that stops renewing its etcd lease keeps its names and its place: the others
    count it as lost once it has run out, and it stops itself.
    """

    def __post_init__(self):
        if isinstance(self.lease_ttl, bool) or not isinstance(self.lease_ttl, int) or self.lease_ttl < 2:
            raise ValueError(f"lease_ttl={self.lease_ttl!r}: a whole number of seconds, 2 or more")

    url: str
    name: str | None = None
    labels: dict = dataclasses.field(default_factory=dict)
    listen: str | None = None           # HOST:PORT for the gateway; by default the address that reaches etcd
    secret: bytes | None = None         # by default ACTORS_CLUSTER_SECRET; none: loopback only
    lease_ttl: int = LEASE_TTL          # seconds without contact with etcd before the node counts as lost

    @classmethod
    def of(cls, cluster) -> ClusterOptions | None:
        if cluster is None or isinstance(cluster, ClusterOptions):
            return cluster
        if isinstance(cluster, str):
            return cls(cluster)
        raise TypeError(f"cluster={cluster!r}: pass the etcd address as a str (etcd://HOST:PORT), or "
                        f"actors.ClusterOptions")


def read_secret(path: str | None) -> bytes:
    """The cluster secret: the file's content (owner-only, like a key), else ACTORS_CLUSTER_SECRET, else none."""
    if path is not None:
        try:
            st = os.stat(path)
            if st.st_mode & 0o077:
                raise ClusterError(f"the secret file {path} can be read by others (mode {st.st_mode & 0o777:o}); "
                                   f"chmod 600 {path}")
            with open(path, "rb") as f:
                secret = f.read().strip()
        except OSError as exc:
            raise ClusterError(f"cannot read the secret file {path}: {exc.strerror or exc}") from None
        if not secret:
            raise ClusterError(f"the secret file {path} is empty")
        return secret
    return os.environ.get(SECRET_ENV, "").encode()


def parse_labels(text: str) -> dict:
    """`k=v,k2=v2` -> {"k": "v", "k2": "v2"}."""
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"bad label {item!r}: write labels as key=value,key2=value2")
        labels[key] = value
    return labels


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"bad listen address {text!r}: expected HOST:PORT (PORT 0 picks a free one)")
    return host.strip("[]"), int(port)


def _json(data) -> bytes:
    return json.dumps(data, sort_keys=True).encode()


class Node:
    """The cluster membership of one driver (see the module docstring)."""

    def __init__(self, driver, options: ClusterOptions):
        self.driver = driver
        self.options = options
        self.secret = options.secret if options.secret is not None else read_secret(None)
        self.etcd = Etcd(options.url)
        self.lease = None
        self.number = 0
        self.name = options.name or f"{socket.gethostname()}-{os.getpid()}"
        self.labels = dict(options.labels)
        self.host = ""
        self.port = 0
        self.gateway = None
        self.members: dict[str, dict] = {}      # live nodes by name (their etcd record, plus "placed" guesses)
        self.left: dict[int, str] = {}
        self.load_changed = trio.Event()
        self.joined = False
        self.scope = trio.CancelScope()     # the node's own tasks: cancelled when it leaves

    # -- joining and leaving ---------------------------------------------------------------------------------------

    async def join(self) -> None:
        """Take a node number and a name under a new lease, and open the gateway; ClusterError says why not."""
        parse_cluster_url(self.options.url)
        host, port = _address(self.options.listen) if self.options.listen else (await self._etcd_facing(), 0)
        tcp.check_listen_address(host, self.secret)
        self.lease = await self.etcd.grant(self.options.lease_ttl)
        self.number = await self._take_number()
        self.gateway = trio.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.gateway.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            await self.gateway.bind((host, port))
        except OSError as exc:
            raise ClusterError(f"cannot listen on {host}:{port} for other nodes: {exc.strerror or exc}") from None
        self.gateway.listen(128)
        self.host, self.port = self.gateway.getsockname()[:2]
        created = await self.etcd.create(self._node_key(self.name), self._record(), lease=self.lease.id)
        if not created.won:
            raise ClusterError(f"a node named {self.name!r} is already in the cluster at {self.options.url}; give "
                               f"this one another name (--name)")
        self.joined = True
        log.info("node %r (number %d) joined the cluster at %s; listening on %s:%d", self.name, self.number,
                 self.options.url, self.host, self.port)

    async def _take_number(self) -> int:
        taken = await self.etcd.get_prefix(PREFIX + "numbers/")
        number = len(taken.kvs) + 1
        while number <= tcp.MAX_NODE_NUMBER:
            if (await self.etcd.create(f"{PREFIX}numbers/{number:04d}", self.name)).won:
                return number
            number += 1
        raise ClusterError(f"the cluster at {self.options.url} has used all {tcp.MAX_NODE_NUMBER} node numbers "
                           f"(one per node start); clear the etcd prefix {PREFIX!r} when no node runs")

    async def _etcd_facing(self) -> str:
        """This machine's address on the network that reaches etcd: where other nodes can reach it too."""
        host, port = parse_cluster_url(self.options.url)
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream(host, port)
        try:
            return stream.socket.getsockname()[0]
        finally:
            await stream.aclose()

    def _node_key(self, name: str) -> str:
        return f"{PREFIX}nodes/{name}"

    def _record(self, leaving: bool = False) -> bytes:
        return _json({"number": self.number, "host": self.host, "port": self.port, "labels": self.labels,
                      "actors": len(self.driver.actors), "cpus": os.cpu_count() or 1, "leaving": leaving})

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep the lease, follow the membership, publish this node's load and serve the gateway, until cancelled.
        Losing the lease stops the system: this node's names and membership are gone."""
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._keep_lease)
                    await nursery.start(self._follow_members)
                    nursery.start_soon(self._publish_load)
                    nursery.start_soon(self._serve_gateway)
                    task_status.started()
        finally:
            self.gateway.close()

    async def _keep_lease(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.lease.keep_alive(task_status=task_status)
        except ClusterError as exc:
            self.driver.fail(ClusterError(f"node {self.name!r} lost its place in the cluster, and stops: {exc}"))

    async def leave(self) -> None:
        """Give back the lease: this node's names and its membership go at once. The others learn that it left
        (rather than was lost) from its record's last version."""
        self.scope.cancel()
        if self.joined:
            self.joined = False
            with trio.move_on_after(3):
                try:
                    await self.etcd.put(self._node_key(self.name), self._record(leaving=True), lease=self.lease.id)
                except ClusterError:
                    pass
        if self.lease is not None:
            with trio.move_on_after(3):
                try:
                    await self.lease.revoke()
                except ClusterError as exc:
                    log.warning("leaving the cluster: %s (the lease runs out by itself in %d s)", exc,
                                self.options.lease_ttl)
        self.joined = False

    # -- membership ----------------------------------------------------------------------------------------------

    async def _follow_members(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep `members` as etcd has it: read, then watch from the revision read. When the watch breaks (etcd
        restarting, a network blip), read and watch again: whether this node may go on is the lease's business
        (`keep_alive` ends the node when it runs out), not the watch's."""
        prefix = PREFIX + "nodes/"
        started = False
        while True:
            try:
                current = await self.etcd.get_prefix(prefix)
                now = {kv.key.decode()[len(prefix):]: json.loads(kv.value) for kv in current.kvs}
                for name in set(self.members) - set(now):
                    self._left(name)
                self.members = now
                self._write_members()
                if not started:
                    started = True
                    task_status.started()
                async with self.etcd.watch(prefix, prefix=True, start_revision=current.revision + 1) as events:
                    async for event in events:
                        name = event.kv.key.decode()[len(prefix):]
                        if event.kind == "put":
                            self.members[name] = json.loads(event.kv.value)
                        else:
                            self._left(name)
                        self._write_members()
            except ClusterError as exc:
                if not started:
                    raise
                log.warning("following the cluster's membership: %s; reading it again", exc)
            await trio.sleep(0.5)          # pacing the retries while etcd is away

    def _left(self, name: str) -> None:
        gone = self.members.pop(name, None)
        if gone is not None:
            self.left[gone["number"]] = name
            lost = not gone.get("leaving")
            if lost:
                log.warning("node %r is lost: its lease ran out", name)
            else:
                log.info("node %r left the cluster", name)
            self._write_members()       # first: whoever connects from now on learns that it is gone
            self.driver.node_gone(gone["number"], name, "node lost" if lost else "node left")

    def _write_members(self) -> None:
        nodes = {info["number"]: (name, info["host"], info["port"]) for name, info in self.members.items()}
        tcp.Membership.write(os.path.join(self.driver.rundir, "members.json"), nodes, self.left)

    def node_name(self, number: int) -> str:
        for name, info in self.members.items():
            if info["number"] == number:
                return name
        return self.left.get(number, f"#{number}")

    def nodes(self) -> list[NodeInfo]:
        return sorted((NodeInfo(name, dict(info["labels"]), f"{info['host']}:{info['port']}", info["actors"],
                                info["cpus"], name == self.name) for name, info in self.members.items()),
                      key=lambda n: n.name)

    def note_load(self) -> None:
        self.load_changed.set()

    async def _publish_load(self) -> None:
        # At most a few updates a second, whatever the rate of spawns.
        while True:
            await self.load_changed.wait()
            self.load_changed = trio.Event()
            try:
                await self.etcd.put(self._node_key(self.name), self._record(), lease=self.lease.id)
            except ClusterError as exc:
                log.warning("could not publish this node's load: %s", exc)
                self.load_changed.set()     # try again at the next pass
            await trio.sleep(0.2)      # pacing the updates, not synchronisation

    # -- placement -----------------------------------------------------------------------------------------------

    def place(self, node: str | None, labels: dict | None) -> tuple[str, int] | None:
        """Where to spawn: (node name, its driver's id), or None for this node. A named node, else the least
        loaded of the nodes that carry every label asked for (actors per CPU: this node's own count, and for the
        others the count they published plus those this node placed there since), this node first among equals."""
        if node is not None:
            if node == self.name:
                return None
            info = self.members.get(node)
            if info is None:
                raise ActorsError(f"cannot spawn on node {node!r}: no such node is in the cluster (its nodes: "
                                  f"{', '.join(sorted(self.members)) or 'none'})")
            if labels and any(info["labels"].get(k) != v for k, v in labels.items()):
                raise ActorsError(f"cannot spawn on node {node!r}: it does not carry the labels {labels}")
            return node, info["number"] << tcp.NODE_SHIFT
        candidates = [(name, info) for name, info in self.members.items()
                      if not labels or all(info["labels"].get(k) == v for k, v in labels.items())]
        if not candidates:
            raise ActorsError(f"cannot spawn: no node of the cluster carries the labels {labels}")
        def load(candidate):
            name, info = candidate
            actors = len(self.driver.actors) if name == self.name else info["actors"] + info.get("placed", 0)
            return actors / info["cpus"], name != self.name, name

        name, info = min(candidates, key=load)
        if name == self.name:
            return None
        info["placed"] = info.get("placed", 0) + 1     # until its next load update replaces the record
        return name, info["number"] << tcp.NODE_SHIFT

    # -- names ---------------------------------------------------------------------------------------------------

    async def claim_name(self, name: str, actor_id: int, persistent: bool) -> int:
        """Take `name` for the actor, across the cluster; the claim (its revision), for `release_name`."""
        created = await self.etcd.create(f"{PREFIX}names/{name}", _json({"id": actor_id, "persistent": persistent}),
                                         lease=self.lease.id)
        if not created.won:
            holder = json.loads(created.holder.value)
            raise ActorsError(f"cannot spawn an actor named {name!r}: an actor of that name is running on node "
                              f"{self.node_name(holder['id'] >> tcp.NODE_SHIFT)!r}")
        return created.holder.create_revision

    async def release_name(self, name: str, claim: int) -> None:
        """Give the name back: only this claim of it, never a later actor's (releasing twice is harmless)."""
        try:
            await self.etcd.delete_created(f"{PREFIX}names/{name}", claim)
        except ClusterError as exc:
            log.warning("could not release the name %r in etcd: %s", name, exc)

    async def lookup(self, name: str) -> ActorRef:
        kv = await self.etcd.get(f"{PREFIX}names/{name}")
        if kv is None:
            raise ActorNotFoundError(f"no running actor is named {name!r} on any node of the cluster")
        holder = json.loads(kv.value)
        return ActorRef(holder["id"], name, holder["persistent"])

    # -- classes -------------------------------------------------------------------------------------------------

    async def publish_classes(self, entries) -> None:
        """Put registry entries in etcd, signed with the cluster secret: a node unpickles only what a node of its
        cluster published, not whatever else can write to etcd."""
        for entry in entries:
            pickled = cloudpickle.dumps(entry)
            await self.etcd.put(f"{PREFIX}classes/{entry.code:016x}",
                                base64.b64encode(tcp.sign(self.secret, pickled) + pickled))

    async def fetch_class(self, code: int) -> bytes | None:
        """A registry entry another node published (pickled), or None; ClusterError if its signature is wrong."""
        kv = await self.etcd.get(f"{PREFIX}classes/{code:016x}")
        if kv is None:
            return None
        data = base64.b64decode(kv.value)
        signature, pickled = data[:tcp.MAC], data[tcp.MAC:]
        if not tcp.verify(self.secret, pickled, signature):
            raise ClusterError(f"the class entry {code:016x} in etcd is not signed with this cluster's secret: "
                               f"refusing to load it (was it written by a node of another cluster?)")
        return pickled

    # -- the gateway ---------------------------------------------------------------------------------------------

    async def _serve_gateway(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                sock, _ = await self.gateway.accept()
                nursery.start_soon(self._admit, sock)

    async def _admit(self, sock) -> None:
        """Authenticate a connection from another node and hand it to the endpoint it is for."""
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)     # records go out as they are flushed
            await tcp.answer_dial(sock, self.secret, self._route)
        finally:
            sock.close()

    def _route(self, target: int, sock) -> tuple[int, int]:
        """(status, incarnation) for a connection to `target`, handed over to it when it can take it."""
        driver = self.driver
        if target >> tcp.NODE_SHIFT != self.number:
            return tcp.GONE, 0              # an id of an earlier node, or of another node
        if target & tcp.LOCAL_MASK == 0:
            plain = socket.socket(fileno=os.dup(sock.fileno()))
            plain.setblocking(False)
            driver.endpoint.accept_link(tcp.TcpLink(-1, plain, driver.endpoint.arena))
            return tcp.OK, os.getpid()
        info = driver.actors.get(target)
        if info is None:
            return tcp.GONE, 0
        if not (info.pid and info.started and info.returncode is None and not info.restarting):
            return tcp.NOT_RUNNING, 0
        if not tcp.hand_over(driver.rundir, target & tcp.LOCAL_MASK, sock):
            return tcp.NOT_RUNNING, 0
        return tcp.OK, info.pid
