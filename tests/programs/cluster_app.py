"""Programs the cluster tests run on a simulated host, as nodes of the cluster: `python cluster_app.py SCENARIO
ETCD_URL NODE_NAME [ARGS...]`. Each prints `key=value` lines (values as Python literals) for the test to check, and
reads a line from stdin where it must wait for the test. Its classes live in __main__, so they travel to the other
nodes by value, as an app's do.
"""
import functools
import os
import sys

import numpy as np
import trio

import actors


def say(key, value):
    print(f"{key}={value!r}", flush=True)


async def wait_for_line():
    """Wait for the test's go-ahead (a line on stdin)."""
    await trio.to_thread.run_sync(sys.stdin.readline)


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


actors.register_class(Point)        # before the system starts: published when the node joins


class Late:
    def __init__(self, tag):
        self.tag = tag


class Echo(actors.Actor):
    def __init__(self):
        self.seen = 0

    async def receive(self, message):
        self.seen += 1
        if isinstance(message, np.ndarray):
            return {"shape": message.shape, "sum": float(message.sum()), "writeable": message.flags.writeable,
                    "in_shm": type(message.base).__name__}
        if isinstance(message, Point):
            return ("point", message.x + message.y, self.ref.node)
        if isinstance(message, Late):
            return ("late", message.tag, self.ref.node)
        return (message, self.ref.node)

    async def seen_count(self):
        return self.seen

    async def where(self):
        return self.ref.node, os.getpid()

    async def find(self, name):
        """A lookup from inside an actor: through its own node's driver."""
        ref = await self.system.lookup(name)
        return ref.name, ref.node


class Collector(actors.Actor):
    def __init__(self):
        self.got = []

    async def receive(self, message):
        if isinstance(message, actors.Terminated):
            self.got.append(("terminated", message.ref.name, message.restarting))
        else:
            self.got.append(message)

    async def collected(self):
        return self.got


class Relay(actors.Actor):
    """Passes a message on to the next ref it carries, adding its node's name: refs inside messages, routed from
    whatever node holds them."""

    async def receive(self, message):
        route, trail = message
        trail = [*trail, self.ref.node]
        if len(route) == 1:
            await route[0].tell(trail)
        else:
            await route[0].tell((route[1:], trail))

    async def ask_next(self, ref, value):
        """An ask from inside a handler, to an actor on another node."""
        return (self.ref.node, await ref.ask(value, timeout=10))

    async def ask_failing(self, ref, value):
        """An ask that its node's loss ends: the error it raised."""
        try:
            return ("answered", await ref.ask(value, timeout=120))
        except actors.ActorStoppedError as exc:
            return ("failed", str(exc))


class Tally(actors.Actor):
    """A persistent running total; "count" answers it, "pid" its process."""
    persistent = True
    restart = "always"
    max_restarts = 10

    def __init__(self):
        self.n = 0

    async def receive(self, message):
        if message == "count":
            return self.n
        if message == "pid":
            return os.getpid()
        self.n += message


class Producer(actors.Actor):
    """Sends `n` increments to a tally, each a tell of its own; answers `n` once every one is posted."""

    async def receive(self, message):
        tally, n = message
        for _ in range(n):
            await tally.tell(1)
        return n


class Numbers(actors.Actor):
    """A persistent list of what it received; "list" answers it."""
    persistent = True

    def __init__(self):
        self.got = []

    async def receive(self, message):
        if message == "list":
            return self.got
        self.got.append(message)


class Numberer(actors.Actor):
    """Tells `to` 0, 1, 2, ... without end, each a tell of its own."""

    async def receive(self, to):
        i = 0
        while True:
            await to.tell(i)
            i += 1


class Hang(actors.Actor):
    async def receive(self, message):
        await trio.sleep(3600)          # an answer that never comes: its node goes first


class Slow(actors.Actor):
    """Stalls on "stall" (reading nothing meanwhile), then counts what it received."""

    def __init__(self):
        self.count = 0

    async def receive(self, message):
        if message == "stall":
            await trio.sleep(3)         # stands for slow work
        elif message == "count":
            return self.count
        else:
            self.count += 1


class Filler(actors.Actor):
    """Fills its node's store ("fill": how many arrays it holds) but for room for small messages (its own answers,
    the asks of the test): no payload of 1 MiB fits. "release" lets it all go."""

    def __init__(self):
        self.held = []

    async def receive(self, message):
        if message == "fill":
            for floats in (1 << 17, 1 << 14):       # 1 MiB, then 128 KiB in the last 1 MiB's room
                try:
                    while True:
                        self.held.append(actors.shared_array(floats))
                except actors.StoreFullError:
                    self.held.pop()
            return len(self.held)
        self.held.clear()


class Counting(actors.Actor):
    """Counts what it receives; "count" answers it, `pid` its process."""

    def __init__(self):
        self.count = 0

    async def receive(self, message):
        if isinstance(message, str) and message == "count":
            return self.count
        self.count += 1

    async def pid(self):
        return os.getpid()


# -- scenarios ---------------------------------------------------------------------------------------------------------


async def _spawn_from_a_module_only_here(system):
    """Spawn on another node a class of a module that only this program can import; the error."""
    import importlib
    import shutil
    import tempfile
    where = tempfile.mkdtemp()
    try:
        with open(os.path.join(where, "only_here.py"), "w") as f:
            f.write("import actors\n\nclass Local(actors.Actor):\n    async def receive(self, msg):\n"
                    "        return msg\n")
        sys.path.insert(0, where)
        only_here = importlib.import_module("only_here")
        try:
            await system.spawn(only_here.Local, node=NODES[0], name="from-elsewhere")
        except actors.ActorsError as exc:
            return str(exc)
    finally:
        sys.path.remove(where)
        shutil.rmtree(where)


async def placement(system):
    say("nodes", sorted((n.name, n.labels, n.here) for n in await system.nodes()))
    on_h2 = await system.spawn(Echo, node=NODES[0], name=f"placed-{NODES[0]}")
    say("named_node", on_h2.node)
    say("named_node_answers", await on_h2.proxy.where(timeout=10))
    by_label = await system.spawn(Echo, labels={"role": "gpu"})
    say("label_node", by_label.node)
    try:
        await system.spawn(Echo, labels={"role": "none-has-it"})
    except actors.ActorsError as exc:
        say("no_label", str(exc))
    try:
        await system.spawn(Echo, node="no-such-node")
    except actors.ActorsError as exc:
        say("no_node", str(exc))
    try:
        await system.spawn(Tally, node=NODES[0], name="tally-without-dir")
    except actors.ActorsError as exc:
        say("no_dir", str(exc))
    say("no_module", await _spawn_from_a_module_only_here(system))
    spread = [await system.spawn(Echo) for _ in range(6)]
    say("spread", sorted({ref.node for ref in spread}))


async def talk(system):
    echo = await system.spawn(Echo, node=NODES[0])
    say("ask", await echo.ask("hello", timeout=10))
    for i in range(2000):
        await echo.tell(i)
    for i in range(500):
        echo.tell_nowait(i) if i % 2 else await echo.tell(i)
    say("proxy", await echo.proxy.seen_count(timeout=10))
    say("point", await echo.ask(Point(2, 3), timeout=10))
    actors.register_class(Late)         # after startup: other nodes fetch it on first use
    say("late", await echo.ask(Late("x"), timeout=10))
    try:
        await echo.tell(actors.put([1, 2, 3]))
    except actors.ActorsError as exc:
        say("objectref", str(exc))
    collector = await system.spawn(Collector)
    await system.watch(echo, watcher=collector)
    await system.stop(echo)
    try:
        await echo.ask("again", timeout=10)
    except actors.ActorStoppedError as exc:
        say("after_stop", str(exc))
    with trio.fail_after(10):
        while not await collector.proxy.collected():
            await trio.sleep(0.02)      # polling the collector, with a deadline
    say("watched", await collector.proxy.collected())


async def refs(system):
    here = await system.spawn(Collector)
    relay2 = await system.spawn(Relay, node=NODES[0])
    relay3 = await system.spawn(Relay, node=NODES[1])
    await relay2.tell(([relay3, here], ["start"]))
    with trio.fail_after(10):
        while not await here.proxy.collected():
            await trio.sleep(0.02)      # polling the collector, with a deadline
    say("trail", await here.proxy.collected())
    echo3 = await system.spawn(Echo, node=NODES[1])
    say("nested_ask", await relay2.proxy.ask_next(echo3, "via", timeout=10))


async def arrays(system):
    echo = await system.spawn(Echo, node=NODES[0], options={"restart": "never"})
    small = np.arange(10, dtype=np.int32)
    say("small", await echo.ask(small, timeout=10))
    big = np.ones(100 * 1024 * 1024 // 8, dtype=np.float64)     # 100 MB
    other = await system.spawn(Echo, node=NODES[0])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: echo.tell(big))
        # while the 100 MB message crosses, small asks from another sender to another actor are not held up
        answered = 0
        for i in range(20):
            if (await other.ask(i, timeout=10))[0] == i:
                answered += 1
        say("small_asks_meanwhile", answered)
    say("big", await echo.ask(big, timeout=60))
    shared = actors.shared_array((1000,), np.float32)
    shared[:] = 2
    say("shared_array", await echo.ask(shared, timeout=10))


async def backpressure(system):
    slow = await system.spawn(Slow, node=NODES[0])
    await slow.tell("stall")
    payload = bytes(10_000)
    accepted = 0
    try:
        while accepted < 100_000:       # 1 GB: far more than any buffer on the way holds
            slow.tell_nowait(payload)
            accepted += 1
            if accepted % 64 == 0:
                await trio.sleep(0)     # let the flusher write what it can
    except actors.MailboxFullError:
        pass
    say("accepted", accepted)
    say("counted", await slow.ask("count", timeout=60))


async def starve(system):
    """A 1 MiB array from this node to one whose store is full: its reader waits for room while the test measures
    its CPU time, then gets room."""
    filler = await system.spawn(Filler, node=NODES[0])
    sink = await system.spawn(Counting, node=NODES[0])
    pid = await sink.proxy.pid(timeout=10)
    say("filled", await filler.ask("fill", timeout=30))
    await sink.tell(np.ones(1 << 17))
    say("starving", pid)
    await wait_for_line()
    await filler.ask("release", timeout=30)
    say("got", await sink.ask("count", timeout=30))


async def node_loss(system):
    await wait_for_line()               # the test starts the node that will be lost
    await wait_for_nodes(system, ["doomed"])
    doomed = await system.spawn(Echo, node="doomed")
    hanging = await system.spawn(Hang, node="doomed")
    watcher = await system.spawn(Collector)
    await system.watch(doomed, watcher=watcher)
    elsewhere = await system.spawn(Relay, node=NODES[0])
    say("ready", True)
    results = {}

    async def ask_from_here():
        try:
            await hanging.ask("answer?", timeout=120)
        except actors.ActorStoppedError as exc:
            results["driver"] = str(exc)

    async def ask_from_an_actor():
        results["actor"] = await elsewhere.proxy.ask_failing(hanging, "answer?", timeout=120)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask_from_here)
        nursery.start_soon(ask_from_an_actor)
        await wait_for_line()           # the test splits the doomed node off the network
        split = trio.current_time()
        with trio.fail_after(60):
            while not await watcher.proxy.collected():
                await trio.sleep(0.05)  # polling the collector, with a deadline
        say("terminated", (await watcher.proxy.collected(), trio.current_time() - split))
    say("asks", results)
    say("nodes_after", sorted(n.name for n in await system.nodes()))
    try:
        await doomed.tell("anyone?")
    except actors.ActorStoppedError as exc:
        say("tell_after", str(exc))


async def replacement(system):
    await wait_for_line()               # the test starts the node that will be lost
    await wait_for_nodes(system, ["mortal"])
    phoenix = await system.spawn(Echo, node="mortal", name="phoenix", options={"restart": "always"})
    fragile = await system.spawn(Echo, node="mortal", name="fragile", options={"restart": "never"})
    say("before", (await phoenix.ask("hi", timeout=10))[1])
    await wait_for_line()               # the test has killed its node
    split = trio.current_time()
    with trio.fail_after(60):
        while True:
            try:
                answer = await phoenix.ask("again", timeout=1)   # the same ref, as any holder of it has
                break
            except (actors.ActorStoppedError, actors.AskTimeoutError):
                await trio.sleep(0.05)  # polling for it to run again, with a deadline
    say("after", (answer[1], trio.current_time() - split))
    found = await system.lookup("phoenix")
    say("same", (found == phoenix, found.node))
    try:
        await system.lookup("fragile")
    except actors.ActorNotFoundError:
        say("fragile", "gone")


async def persistent_remote(system):
    await wait_for_line()               # the test starts the node that keeps the journal
    await wait_for_nodes(system, ["keeper"])
    tally = await system.spawn(Tally, node="keeper", name="tally")
    total = 3000
    kills = 0
    for i in range(total):
        await tally.tell(1)
        if i in (700, 1500, 2300):      # kill -9 its process (hosts share the pid space): mid-stream
            os.kill(await answered(tally, "pid"), 9)
            kills += 1
    say("tally", (await answered(tally, "count"), total, kills))


async def chaos(system):
    """A tally on NODES[0], producers on NODES[1:], driven by the test's lines: `send N` (each producer sends N
    more, in the background), `pid` (the tally's process), `count`, `nodes` (the live ones), `end` (wait for the
    producers, then for the tally to have journaled everything: its final count)."""
    home, *others = NODES
    await wait_for_nodes(system, NODES)
    tally = await system.spawn(Tally, node=home, name="chaos-tally",
                               # no snapshot: the journal keeps every batch, for the test to read who wrote what
                               options={"max_restarts": 1000, "restart_backoff": 0.05, "snapshot_every": 10**9})
    producers = [await system.spawn(Producer, node=node) for node in others]
    sent = 0
    async with trio.open_nursery() as nursery:
        say("ready", True)
        while True:
            command, *args = (await trio.to_thread.run_sync(sys.stdin.readline)).split()
            if command == "send":
                for producer in producers:
                    nursery.start_soon(functools.partial(producer.ask, (tally, int(args[0])), timeout=600))
                sent += int(args[0]) * len(producers)
            elif command == "pid":
                say("pid", await answered(tally, "pid"))
            elif command == "count":
                say("count", await answered(tally, "count"))
            elif command == "nodes":
                say("nodes", sorted(n.name for n in await system.nodes()))
            elif command == "end":
                break
    with trio.fail_after(120):
        while (count := await answered(tally, "count")) < sent:
            await trio.sleep(0.1)       # polling the tally until the last resent tells arrive, with a deadline
    say("final", (count, sent))


async def sender_loss(system):
    """A persistent receiver on NODES[0], a sender on NODES[1] that the test kills mid-stream: what arrived."""
    home, doomed = NODES
    await wait_for_nodes(system, NODES)
    numbers = await system.spawn(Numbers, node=home, name="numbers")
    sender = await system.spawn(Numberer, node=doomed)
    await sender.tell(numbers)
    with trio.fail_after(30):
        while len(await numbers.ask("list")) < 500:
            await trio.sleep(0.05)      # polling until the stream is under way, with a deadline
    say("streaming", True)              # the test kills the sender's node now
    with trio.fail_after(30):
        while doomed in {n.name for n in await system.nodes()}:
            await trio.sleep(0.05)      # polling the membership until the node is lost, with a deadline
    say("got", await numbers.ask("list"))


async def wait_for_nodes(system, names):
    with trio.fail_after(30):
        while not set(names) <= {n.name for n in await system.nodes()}:
            await trio.sleep(0.05)      # polling the membership, with a deadline


async def answered(ref, message):
    """The answer to `message`, asked again while the actor is being restarted (an ask in flight when it died
    fails rather than being resent)."""
    with trio.fail_after(60):
        while True:
            try:
                return await ref.ask(message, timeout=5)
            except (actors.ActorStoppedError, actors.AskTimeoutError):
                await trio.sleep(0.05)  # polling for its restart, with a deadline


async def race(system):
    await wait_for_line()
    try:
        ref = await system.spawn(Echo, name="the-one")
        say("race", "won")
        say("holder", ref.node)
        await wait_for_line()
    except actors.ActorsError as exc:
        say("race", str(exc))


async def lookup(system):
    target = await system.spawn(Echo, node=NODES[1], name="findme")
    found = await system.lookup("findme")
    say("from_driver", (found.name, found.node, found == target))
    asker = await system.spawn(Echo, node=NODES[0])
    say("from_actor", await asker.proxy.find("findme", timeout=10))
    try:
        await system.lookup("nobody-has-this-name")
    except actors.ActorNotFoundError as exc:
        say("missing", str(exc))
    await system.stop(target)           # its name is free again once stop returns, on any node
    again = await system.spawn(Echo, node=NODES[0], name="findme")
    say("taken_again", ((await system.lookup("findme")).node, again.node))


async def join_leave(system):
    say("before", sorted(n.name for n in await system.nodes()))
    await wait_for_line()           # the test starts another node
    await wait_for_nodes(system, ["late"])
    say("joined", sorted(n.name for n in await system.nodes()))
    echo = await system.spawn(Echo, node="late")
    say("on_late", await echo.ask("hi", timeout=10))
    await wait_for_line()           # the test stops it
    with trio.fail_after(20):
        while "late" in {n.name for n in await system.nodes()}:
            await trio.sleep(0.05)  # polling the membership, with a deadline
    say("left", sorted(n.name for n in await system.nodes()))
    try:
        await echo.ask("still there?", timeout=10)
    except actors.ActorStoppedError as exc:
        say("gone", str(exc))


async def wrong_secret(system):
    try:
        await system.spawn(Echo, node=NODES[0])
    except actors.ActorsError as exc:
        say("refused", str(exc))


SCENARIOS = {f.__name__: f for f in (placement, talk, refs, arrays, backpressure, race, lookup, join_leave,
                                     wrong_secret, node_loss, replacement, persistent_remote, chaos,
                                     sender_loss, starve)}

if __name__ == "__main__":
    scenario, url, name, *NODES = sys.argv[1:]
    say("node", name)
    actors.run(SCENARIOS[scenario], cluster=actors.ClusterOptions(url, name=name), store_capacity="512M")
    say("done", scenario)
