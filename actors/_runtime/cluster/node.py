"""A node of a cluster: this system's driver as one member of several, on etcd.

etcd holds what the nodes must agree on; messages never pass through it. Under the prefix `actors/`:
- `numbers/<n>`: node number n was taken by the node named in the value. Numbers are never reused (the keys stay),
  so an id minted by a node that has left never reaches a newer node.
- `nodes/<name>`: a live node (JSON: number, host, port, labels, actors, cpus), bound to the node's lease: it goes
  when the node stops, or when it dies and its lease runs out.
- `names/<actor name>`: the actor that holds the name (JSON: id, persistent), bound to its node's lease. Created
  with a transaction, so that of several nodes spawning one name at once exactly one wins.
- `specs/<id>`, `persistent/<id>`, `moved/<id>`: what re-placement needs (see "re-placement" below).
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
import time

import cloudpickle
import trio

from actors._exceptions import ActorNotFoundError, ActorsError, ClusterError
from actors._ref import ActorRef
from actors._runtime.cluster.etcd import Etcd, parse_cluster_url
from actors._wire import tcp
from actors._wire.protocol import SystemOp

log = logging.getLogger(__name__)

PREFIX = "actors/"
RECONCILE_PACE = 5.0    # seconds at most between passes of re-placement while some actor could not be re-placed
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
    count it as lost once it has run out, and it stops itself. `margin`: a node out of touch with etcd kills its
    persistent actors this many seconds before its lease can run out, so that they are dead before any node runs
    them again (less than two thirds of the TTL: the lease is renewed every third). `shared_resilience`: the
    resilience directory is on storage that every node mounts at the same path (see docs/cluster.md), so that a
    persistent actor of a lost node starts again on another node, rather than when its own node comes back.
    """

    def __post_init__(self):
        if isinstance(self.lease_ttl, bool) or not isinstance(self.lease_ttl, int) or self.lease_ttl < 2:
            raise ValueError(f"lease_ttl={self.lease_ttl!r}: a whole number of seconds, 2 or more")
        if not 0 <= self.margin < self.lease_ttl * 2 / 3:
            raise ValueError(f"margin={self.margin!r}: 0 or more, and less than two thirds of lease_ttl "
                             f"({self.lease_ttl} s), since the lease is renewed every third of it")

    url: str
    name: str | None = None
    labels: dict = dataclasses.field(default_factory=dict)
    listen: str | None = None           # HOST:PORT for the gateway; by default the address that reaches etcd
    secret: bytes | None = None         # by default ACTORS_CLUSTER_SECRET; none: loopback only
    lease_ttl: int = LEASE_TTL          # seconds without contact with etcd before the node counts as lost
    margin: float = 1.0                 # seconds before the lease's end that its persistent actors are killed
    shared_resilience: bool = False     # the resilience directory is on storage all nodes share

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
        self.moved: dict[int, int] = {}     # actor id -> the node now running it, for actors re-placed elsewhere
        self.leading = False                # this node is the coordinator, which re-places lost nodes' actors
        self.reconciling = trio.Lock()
        self.lost = False                   # this node lost its lease: it stops, and leaves etcd to the others
        self.awaited: dict[int, dict] = {}  # persistent actors with a spec (by id): senders wait for them
        self.nursery = None

    # -- joining and leaving ---------------------------------------------------------------------------------------

    async def join(self) -> None:
        """Take a node number and a name under a new lease, and open the gateway; ClusterError says why not."""
        parse_cluster_url(self.options.url)
        host, port = _address(self.options.listen) if self.options.listen else (await self.etcd.facing_address(), 0)
        tcp.check_listen_address(host, self.secret)
        # A node restarted right after it died finds its old record until that lease runs out: wait for it (before
        # taking a lease of our own, which nothing renews yet).
        deadline = trio.current_time() + self.options.lease_ttl + 1
        while await self.etcd.get(self._node_key(self.name)) is not None and trio.current_time() < deadline:
            await trio.sleep(0.2)      # polling for the old record to run out, with a deadline
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

    def _node_key(self, name: str) -> str:
        return f"{PREFIX}nodes/{name}"

    def _record(self, leaving: bool = False) -> bytes:
        return _json({"number": self.number, "host": self.host, "port": self.port, "labels": self.labels,
                      "actors": len(self.driver.actors), "cpus": os.cpu_count() or 1, "leaving": leaving,
                      "shared": self.options.shared_resilience})

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep the lease, follow the membership, publish this node's load and serve the gateway, until cancelled.
        Losing the lease stops the system: this node's names and membership are gone."""
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    await nursery.start(self._keep_lease)
                    await nursery.start(self._follow, PREFIX + "moved/", self._by_id("moved"))
                    await nursery.start(self._follow, PREFIX + "persistent/", self._by_id("awaited"))
                    await nursery.start(self._follow, PREFIX + "nodes/", self._members)
                    nursery.start_soon(self._publish_load)
                    nursery.start_soon(self._serve_gateway)
                    nursery.start_soon(self._lead)
                    task_status.started()
        finally:
            self.gateway.close()

    async def _keep_lease(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.lease.keep_alive(margin=self.options.margin, task_status=task_status)
        except ClusterError as exc:
            # Fencing: the persistent actors die first, now, before any node may start them again.
            self.lost = True
            self.driver.kill_persistent(f"node {self.name!r} lost its lease")
            self.driver.fail(ClusterError(f"node {self.name!r} lost its place in the cluster, and stops: {exc}"))

    async def leave(self) -> None:
        """Give back the lease: this node's names and its membership go at once. The others learn that it left
        (rather than was lost) from its record's last version."""
        self.scope.cancel()
        if self.lost:
            return                      # the lease has run out: nothing of this node is left in etcd
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

    async def _follow(self, prefix: str, apply, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep a table as etcd has it under `prefix`: read, then watch from the revision read; `apply(key, value)`
        for each change (value None: deleted), `apply(None, {key: value})` for a whole read. When the watch breaks
        (etcd restarting, a network blip), read and watch again: whether this node may go on is the lease's
        business (`keep_alive` ends the node when it runs out), not the watch's."""
        started = False
        while True:
            try:
                current = await self.etcd.get_prefix(prefix)
                apply(None, {kv.key.decode()[len(prefix):]: json.loads(kv.value) for kv in current.kvs})
                if not started:
                    started = True
                    task_status.started()
                async with self.etcd.watch(prefix, prefix=True, start_revision=current.revision + 1) as events:
                    async for event in events:
                        apply(event.kv.key.decode()[len(prefix):],
                              json.loads(event.kv.value) if event.kind == "put" else None)
            except ClusterError as exc:
                if not started:
                    raise
                log.warning("following %s in etcd: %s; reading it again", prefix, exc)
            await trio.sleep(0.5)          # pacing the retries while etcd is away

    def _members(self, name: str | None, info) -> None:
        if name is None:
            for gone in set(self.members) - set(info):
                self._left(gone)
            self.members = info
        elif info is None:
            self._left(name)
        else:
            joined = name not in self.members
            self.members[name] = info
            if joined and self.leading and name != self.name:
                self.nursery.start_soon(self.reconcile)     # a persistent actor's home may be back
        self._write_members()

    def _by_id(self, attr: str):
        """An `apply` for `_follow` that keeps `self.<attr>` as {actor id: value} (etcd keys name ids in hex)."""
        def apply(key: str | None, value) -> None:
            if key is None:
                setattr(self, attr, {int(k, 16): v for k, v in value.items()})
            elif value is None:
                getattr(self, attr).pop(int(key, 16), None)
            else:
                getattr(self, attr)[int(key, 16)] = value
            self._write_members()
        return apply

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
            if lost and self.leading:
                self.nursery.start_soon(self.reconcile)

    def _write_members(self) -> None:
        nodes = {info["number"]: (name, info["host"], info["port"]) for name, info in self.members.items()}
        tcp.Membership.write(os.path.join(self.driver.rundir, "members.json"), nodes, self.left, self.moved,
                             self.awaited)

    def node_of(self, actor_id: int) -> int:
        """The number of the node that runs `actor_id` now (re-placed actors keep their ids)."""
        return self.moved.get(actor_id, actor_id >> tcp.NODE_SHIFT)

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

    def place(self, node: str | None, labels: dict | None, shared: bool = False) -> tuple[str, int] | None:
        """Where to spawn: (node name, its driver's id), or None for this node. A named node, else the least
        loaded of the nodes that carry every label asked for (actors per CPU: this node's own count, and for the
        others the count they published plus those this node placed there since), this node first among equals.
        `shared`: among the nodes whose resilience directory is the shared one (a persistent actor's journal)."""
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
                      if (not labels or all(info["labels"].get(k) == v for k, v in labels.items()))
                      and (not shared or info.get("shared"))]
        if not candidates and shared:
            raise ActorsError("no live node shares the resilience directory (--shared-resilience)")
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

    # -- re-placement ----------------------------------------------------------------------------------------------
    #
    # An actor whose restart policy asks for restarts ("always", "on-failure") has a spec in etcd (`specs/<id>`:
    # how to spawn it again, whose it is, when it was re-placed), deleted when it stops for good. When a node is
    # lost, the coordinator (one node, elected through etcd) spawns each such actor of the lost node again on a live
    # node, under the same name and id, and records where (`moved/<id>`), so that refs held anywhere reach it
    # there. An actor whose owner (the node that spawned it) is gone too is not re-placed: it would have been
    # stopped with its owner.
    #
    # A persistent actor goes where its journal is: with a shared resilience directory, to any node that shares
    # it; otherwise back to its home node (the node of that name), when that node joins again. Until then its
    # senders hold its unacked tells: `persistent/<id>` tells every node to wait for it rather than count it gone.
    # Its name, bound to the lost node's lease, is free only once that lease has run out, and its new claim's
    # revision is the journal's new writer epoch (see actors._persist): the old instance, dead by then (a node
    # that cannot renew kills its persistent actors first), could not write to it any more anyway.

    async def record_spec(self, actor_id: int, pickled: bytes, name: str, opts: dict, owner: str,
                          replaced: list | None = None) -> None:
        spec = cloudpickle.dumps({"pickled": pickled, "name": name, "options": opts, "owner": owner,
                                  "replaced": replaced or [], "home": self.name,
                                  "shared": self.options.shared_resilience})
        await self.etcd.put(f"{PREFIX}specs/{actor_id:08x}", base64.b64encode(tcp.sign(self.secret, spec) + spec))
        if opts["persistent"]:      # its senders hold what it has not acked until it runs again
            await self.etcd.put(f"{PREFIX}persistent/{actor_id:08x}",
                                _json({"name": name, "home": self.name, "shared": self.options.shared_resilience}))

    async def drop_spec(self, actor_id: int) -> None:
        try:
            await self.etcd.delete(f"{PREFIX}specs/{actor_id:08x}")
            await self.etcd.delete(f"{PREFIX}persistent/{actor_id:08x}")
            if actor_id in self.moved:
                await self.etcd.delete(f"{PREFIX}moved/{actor_id:08x}")
        except ClusterError as exc:
            log.warning("could not forget the spec of actor #%d in etcd: %s", actor_id, exc)

    async def moved_here(self, actor_id: int) -> None:
        """Route `actor_id` here from now on: at once on this node, through etcd on the others."""
        self.moved[actor_id] = self.number
        self._write_members()
        await self.etcd.put(f"{PREFIX}moved/{actor_id:08x}", str(self.number))

    async def moved_back(self, actor_id: int, was: int | None) -> None:
        """Undo `moved_here`: the actor could not start here."""
        try:
            if was is None:
                self.moved.pop(actor_id, None)
                await self.etcd.delete(f"{PREFIX}moved/{actor_id:08x}")
            else:
                self.moved[actor_id] = was
                await self.etcd.put(f"{PREFIX}moved/{actor_id:08x}", str(was))
        except ClusterError as exc:
            log.warning("could not route actor #%d back in etcd: %s", actor_id, exc)
        self._write_members()

    async def _lead(self) -> None:
        """Campaign to be the coordinator; once leading (until this node's lease ends), re-place what needs it."""
        await self.etcd.campaign(PREFIX + "coordinator", self.name, lease=self.lease.id)
        self.leading = True
        log.info("node %r coordinates the cluster: it re-places the actors of lost nodes", self.name)
        await self.reconcile()

    async def reconcile(self) -> None:
        """Spawn again, on live nodes, the actors with a spec whose node is gone (and whose owner is not). What
        fails (a node that has just joined and is not answering yet, etcd away, a journal still locked by an
        instance on its way out) is tried again, with backoff, for as long as this node leads."""
        async with self.reconciling:    # one pass at a time: two would spawn one actor twice
            delay = 0.5
            while not await self._reconcile_once():
                await trio.sleep(delay)    # pacing the retries, with backoff
                delay = min(delay * 2, RECONCILE_PACE)

    async def _reconcile_once(self) -> bool:
        live = {info["number"] for info in self.members.values()}
        try:
            specs = await self.etcd.get_prefix(PREFIX + "specs/")
        except ClusterError as exc:
            log.warning("could not read the actors to re-place: %s", exc)
            return False
        done = True
        specified = {int(kv.key.decode().rsplit("/", 1)[1], 16) for kv in specs.kvs}
        for actor_id in set(self.awaited) - specified:
            try:                        # a stop that was cut short between its deletes: nobody waits for it
                await self.etcd.delete(f"{PREFIX}persistent/{actor_id:08x}")
            except ClusterError:
                done = False
        for kv in specs.kvs:
            actor_id = int(kv.key.decode().rsplit("/", 1)[1], 16)
            if self.node_of(actor_id) in live:
                continue
            data = base64.b64decode(kv.value)
            if not tcp.verify(self.secret, data[tcp.MAC:], data[:tcp.MAC]):
                log.error("the spec of actor #%d in etcd is not signed with this cluster's secret: ignored",
                          actor_id)
                continue
            spec = cloudpickle.loads(data[tcp.MAC:])
            done = await self._replace(actor_id, spec) and done
        return done

    async def _replace(self, actor_id: int, spec: dict) -> bool:
        """Re-place one actor of a lost node; False if it failed (and is worth trying again)."""
        name, opts = spec["name"], spec["options"]
        if spec["owner"] not in self.members:
            await self.drop_spec(actor_id)      # its owner is gone: nobody holds it any more
            return True
        now = time.time()              # wall clock: the next coordinator may be another machine
        replaced = [t for t in spec["replaced"] if now - t < opts["restart_window"]]
        if len(replaced) >= opts["max_restarts"]:
            log.error("actor %r is not re-placed: it was re-placed %d times within %g s, its restart intensity",
                      name, len(replaced), opts["restart_window"])
            await self.drop_spec(actor_id)
            return True
        try:
            if not opts["persistent"]:
                where = self.place(None, None)
            elif spec["shared"]:        # its journal is on storage that the nodes share: any of them
                where = self.place(None, None, shared=True)
            elif spec["home"] in self.members:      # its journal is on its node: there, when it is back
                where = self.place(spec["home"], None)
            else:
                return True             # (tried again when its home joins)
            args = (spec["pickled"], name, opts, where[0] if where else self.name, None, spec["owner"], actor_id,
                    [*replaced, now])
            if where is None:
                await self.driver._op_spawn(*args)
            else:
                await self.driver._ask_driver(where[1], SystemOp.SPAWN, *args)
            log.warning("actor %r (#%d) %s on node %r: its node was lost", name, actor_id,
                        "restarted at home" if opts["persistent"] and not spec["shared"] else "re-placed",
                        where[0] if where else self.name)
        except Exception as exc:
            log.error("could not re-place actor %r (#%d): %s", name, actor_id, exc)
            return False
        return True

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
        if self.node_of(target) != self.number:
            return tcp.GONE, 0              # an id of an earlier node, or of another node
        if tcp.socket_id(target) == 0:
            plain = socket.socket(fileno=os.dup(sock.fileno()))
            plain.setblocking(False)
            driver.endpoint.accept_link(tcp.TcpLink(-1, plain, driver.endpoint.arena))
            return tcp.OK, os.getpid()
        info = driver.actors.get(target)
        if info is None:
            return tcp.GONE, 0
        if not (info.pid and info.started and info.returncode is None and not info.restarting):
            return tcp.NOT_RUNNING, 0
        if not tcp.hand_over(driver.rundir, target, sock):
            return tcp.NOT_RUNNING, 0
        return tcp.OK, info.pid
