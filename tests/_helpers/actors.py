"""Actor classes for tests/test_actor.py.

They live in a module of their own so that they travel by reference: pytest puts `tests/` on the driver's sys.path,
the fork server gets the driver's sys.path, and every actor imports this module, so `type(x) is Point` holds in
every process.
"""
import os

import numpy as np
import trio

import actors
from actors import ActorNotFoundError, ActorsError


def write_file(path, text):
    with open(path, "w") as f:
        f.write(text)


class Counter(actors.Actor):
    def __init__(self, start=0):
        self.n = start
        self.received = 0

    async def receive(self, delta):
        self.received += 1
        self.n += delta
        return self.n

    async def reset(self, value=0):
        self.n = value
        return value

    async def received_count(self):
        return self.received

    async def give_unencodable(self):
        return {"fine": 1, "bad": [object()]}

    def not_async(self):
        return "sync"


class Echo(actors.Actor):
    async def receive(self, msg):
        return ("echo", self.ref.name, msg)


class Recorder(actors.Actor):
    """Appends every message it is told; answers "get" with the list and "sync" with its length."""

    def __init__(self):
        self.got = []

    async def receive(self, msg):
        if msg == "get":
            return self.got
        if msg == "sync":
            return len(self.got)
        self.got.append(msg)


class Hooks(actors.Actor):
    def __init__(self, directory):
        self.directory = directory
        self.started = False
        self.handled = 0

    async def on_start(self):
        self.started = True
        write_file(os.path.join(self.directory, f"{self.ref.name}.started"), str(os.getpid()))

    async def on_stop(self):
        write_file(os.path.join(self.directory, f"{self.ref.name}.stopped"), str(self.handled))

    async def receive(self, msg):
        if msg == "started?":
            return self.started
        self.handled += 1


class Parent(actors.Actor):
    async def receive(self, msg):
        if msg == "whoami":
            return self.ref
        if msg == "spawn-child":
            child = await self.system.spawn(Echo, name="child-of-" + self.ref.name)
            return child, await child.ask("hi")
        if msg[0] == "spawn":               # ("spawn", class name, *args, actor name)
            cls = globals()[msg[1]]
            try:
                await self.system.spawn(cls, *msg[2:-1], name=msg[-1])
            except ActorsError as exc:
                return type(exc).__name__, str(exc)
            return "spawned", None
        raise ValueError(f"unexpected {msg!r}")


class Pinger(actors.Actor):
    def __init__(self):
        self.pongs = []

    async def receive(self, msg):
        if msg[0] == "start":
            _, ponger, n = msg
            for i in range(n):
                await ponger.tell(("ping", self.ref, i))
        elif msg[0] == "pong":
            self.pongs.append(msg[1:])
        elif msg[0] == "pongs":
            return self.pongs


class Ponger(actors.Actor):
    async def receive(self, msg):
        _, reply_to, i = msg
        assert isinstance(reply_to, actors.ActorRef)
        await reply_to.tell(("pong", self.ref.name, i))


class Forwarder(actors.Actor):
    async def receive(self, msg):
        answers = [await target.ask(msg["note"]) for target in msg["targets"]]
        return {"answers": answers, "refs": msg["targets"], "types": [type(t).__name__ for t in msg["targets"]]}


class Finder(actors.Actor):
    async def receive(self, name):
        try:
            ref = await self.system.lookup(name)
        except ActorNotFoundError as exc:
            return "missing", str(exc)
        return "found", ref, await ref.ask("ping")


class Sender(actors.Actor):
    """Tells `n` numbered messages to `target`, then asks it for what it got."""

    async def receive(self, msg):
        target, n = msg
        for i in range(n):
            await target.tell(i)
        return await target.ask("get")


class Producer(actors.Actor):
    async def receive(self, msg):
        sink, n = msg
        for i in range(n):
            await sink.tell((self.ref.name, i))
        await sink.ask("sync")        # ordered after our tells: the sink has handled them all
        return n


def explode_here(value):
    raise ValueError(f"boom {value}")


class Exploder(actors.Actor):
    async def receive(self, msg):
        if msg == "ok":
            return "fine"
        explode_here(msg)

    async def method_that_fails(self):
        raise KeyError("missing-key")


class Sleeper(actors.Actor):
    async def receive(self, msg):
        if msg[0] == "sleep":
            await trio.sleep(msg[1])
            return "woke"
        return "fast"

    async def nap(self, seconds):
        await trio.sleep(seconds)
        return "napped"


class Suicidal(actors.Actor):
    async def receive(self, msg):
        if msg == "die":
            os._exit(3)
        return "alive"


class Relay(actors.Actor):
    """Sends to a ref it is given and reports how that went."""

    async def receive(self, msg):
        op, ref, payload = msg
        try:
            if op == "tell":
                await ref.tell(payload)
                return "sent", None
            if op == "tell_nowait":
                ref.tell_nowait(payload)
                return "sent", None
            return "answer", await ref.ask(payload)
        except ActorsError as exc:
            return type(exc).__name__, str(exc)


class ArrayChecker(actors.Actor):
    async def receive(self, msg):
        _, arr = msg
        try:
            arr.flat[0] = -1
            wrote = True
        except ValueError:
            wrote = False
        self.kept = arr
        return {"writeable": bool(arr.flags.writeable), "wrote": wrote, "shape": arr.shape, "dtype": str(arr.dtype),
                "sum": float(arr.sum()), "array": arr}


class ArrayMaker(actors.Actor):
    async def receive(self, msg):
        target, n = msg
        arr = np.arange(n, dtype=np.float64).reshape(-1, 4) * 1.5
        return await target.ask(("check", arr))


class Opaque:
    """Never registered: not encodable."""


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y


class PointActor(actors.Actor):
    async def receive(self, p):
        return {"is_point": type(p) is Point, "qualname": type(p).__qualname__, "x": p.x, "y": p.y,
                "moved": Point(p.x + 1, p.y + 1)}


class LateThing:
    """Registered only inside an actor, after startup."""

    def __init__(self, value):
        self.value = value


class LateRegistrar(actors.Actor):
    async def receive(self, target):
        actors.register_class(LateThing)
        return await target.ask(LateThing(7))

    async def make(self, value):
        actors.register_class(LateThing)
        return LateThing(value)


class LateReceiver(actors.Actor):
    async def receive(self, thing):
        return type(thing) is LateThing, type(thing).__qualname__, thing.value, thing


class BadInit(actors.Actor):
    def __init__(self, reason):
        raise ValueError(reason)


class BadStart(actors.Actor):
    async def on_start(self):
        raise RuntimeError("on-start-reason-77")


class ExitInInit(actors.Actor):
    def __init__(self):
        os._exit(7)


class Blocker(actors.Actor):
    """"block" makes the handler await a trio.Event, set once the file `gate` exists (it writes `gate`.blocked
    first); every other message is recorded."""

    def __init__(self, gate):
        self.gate_path = gate
        self.got = []

    async def on_start(self):
        self.gate = trio.Event()

        async def watch():
            while not os.path.exists(self.gate_path):
                await trio.sleep(0.01)
            self.gate.set()

        trio.lowlevel.spawn_system_task(watch)

    async def receive(self, msg):
        if msg == "block":
            write_file(self.gate_path + ".blocked", "")     # the handler is parked: it reads nothing more
            await self.gate.wait()
            return "unblocked"
        if msg == "get":
            return self.got
        if msg == "count":
            return len(self.got)
        self.got.append(msg)


class Stubborn(actors.Actor):
    async def receive(self, msg):
        await trio.sleep_forever()


class LateAsker(actors.Actor):
    """Asks a LateRegistrar for a LateThing, a class this actor's registry does not hold yet."""

    async def receive(self, registrar):
        try:
            thing = await registrar.proxy.make(3)
        except Exception as exc:
            return type(exc).__name__, str(exc)
        return type(thing) is LateThing, thing.value


class Spammer(actors.Actor):
    """Tells `n` numbered messages to `target` and returns at once."""

    async def receive(self, msg):
        target, n = msg
        for i in range(n):
            await target.tell((self.ref.name, i))
        return n


async def block(ref, gate):
    """Park `ref`'s (a Blocker's) handler; return once it is parked (it signals with the file `gate`.blocked)."""
    from _helpers.processes import wait_for_file
    await ref.tell("block")
    await wait_for_file(gate + ".blocked")


class Pid(actors.Actor):
    """Answers every ask with its process id."""

    async def receive(self, msg):
        return os.getpid()

class Sink(actors.Actor):
    """Counts what it is told and keeps nothing of it; answers with the count."""

    def __init__(self):
        self.n = 0

    async def receive(self, msg):
        self.n += 1
        return self.n


class PidReporter(actors.Actor):
    """Restarted whenever it ends; answers "pid" with its process id, anything else with itself."""
    restart = "always"

    async def receive(self, msg):
        if msg == "pid":
            return os.getpid()
        return msg


class PersistentAdder(actors.Actor):
    """A persistent running total, restarted whenever it ends; "count" answers the total."""
    persistent = True
    restart = "always"

    def __init__(self):
        self.n = 0

    async def receive(self, msg):
        if msg == "count":
            return self.n
        self.n += msg


class StatusReader(actors.Actor):
    """Answers with the names and states of the system's actors, from its own `self.system.status()`."""

    async def receive(self, msg):
        status = await self.system.status()
        return [(a.name, a.state) for a in status.actors], status.pid


class FifoWriter(actors.Actor):
    """Told the path of a FIFO, writes "x" to it: a sign that a process outside trio can wait for."""

    async def receive(self, path):
        if path == "ready":
            return "ready"
        write_file(path, "x")


class QuietTeller(actors.Actor):
    """Asked with a ref, tells it twice from inside the handler; answers whether the endpoint's flusher had been
    woken, before the tells and after them."""

    async def receive(self, target):
        from actors import _ref
        wake = _ref._system.endpoint.wake
        before = wake.is_set()
        await target.tell(1)
        await target.tell(2)
        return before, wake.is_set()


class BigSink(actors.Actor):
    """Counts what it is told; "pid" answers its process id, "count" the count. With `keep`, it holds on to every
    message (arrays pin their blocks in the store)."""

    def __init__(self, keep=False):
        self.n = 0
        self.kept = [] if keep else None

    async def receive(self, msg):
        if isinstance(msg, str):
            return os.getpid() if msg == "pid" else self.n
        self.n += 1
        if self.kept is not None:
            self.kept.append(msg)


class Holder(actors.Actor):
    """Constructed with `data`; answers with its length."""

    def __init__(self, data):
        self.data = data

    async def receive(self, msg):
        return len(self.data)
