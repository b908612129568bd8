"""Persistence chaos: persistent actors told by sender actors and the driver, killed with SIGKILL at random moments.

Three persistent receivers, one per `fsync` policy and each with a small `snapshot_every`, count the tells they
receive per sender incarnation and note any that comes out of order (a gap or a duplicate). Sender actors, and the
driver itself, tell them numbered messages, some carrying numpy arrays and registered classes, with asks mixed in.
Receivers and senders are killed at random moments, some again right after their restart (during the recovery).

The check is the guarantee of docs/resilience.md ("Delivery guarantees"): every tell of a sender that lives on is
applied exactly once and in order, across the receivers' kills; a killed sender's tells are a prefix of what it sent
(what it had not had journaled dies with it), and never less than what an ask had already seen applied. Then the
whole system is started again on the same directory, and every receiver must recover the same state. Afterwards
the resilience directory holds only journals and snapshots, /dev/shm nothing of ours, and no process is left. The
suite runs a few dozen kills (tests/test_persist.py); run hundreds from the command line:

    python tests/chaos/persist_chaos.py --kills 500

`--seed` sets the targets, the delays and the messages; where in its work a kill lands is up to the machine's timing,
so a seed does not replay a run exactly.
"""
import argparse
import os
import random
import secrets
import signal
import sys
import tempfile

import numpy as np
import trio

import actors
from actors import _store

RECEIVERS = {"r-group": "group", "r-always": "always", "r-interval": "interval"}
SENDERS = ("s-0", "s-1")
DEADLINE = 60       # seconds for any single wait: an ask, a restart, a final burst


class Stamp:
    """A registered class in a message: the receiver checks that it arrives with the seq it was sent with."""

    def __init__(self, seq):
        self.seq = seq


actors.register_class(Stamp)


def payload(rng, seq):
    """Something of a random kind that the receiver can check against `seq`."""
    kind = rng.randrange(4)
    if kind == 0:
        return None
    if kind == 1:
        return np.full(rng.choice((3, 700, 20_000)), seq, dtype=np.int64)
    if kind == 2:
        return Stamp(seq)
    return {"stamp": Stamp(seq), "array": np.arange(seq, seq + 5)}


def carries(value, seq):
    """Whether a payload made by `payload(rng, seq)` arrived intact."""
    if value is None:
        return True
    if isinstance(value, np.ndarray):
        return bool((value == seq).all())
    if isinstance(value, Stamp):
        return value.seq == seq
    return value["stamp"].seq == seq and value["array"].tolist() == list(range(seq, seq + 5))


class Receiver(actors.Actor):
    """Per sender incarnation (its key), the next seq it expects; every tell that is not that one is a problem."""
    persistent = True
    restart = "always"          # back after every kill, as often as the campaign kills it
    max_restarts = 1_000_000
    restart_window = 0.2
    restart_backoff = 0.001

    def __init__(self):
        self.next = {}          # key -> the seq expected next
        self.problems = []      # (key, expected, got) or (key, seq, "bad payload")

    async def receive(self, message):
        key, seq, value = message
        expected = self.next.get(key, 0)
        if seq != expected:
            self.problems.append((key, expected, seq))
        self.next[key] = max(expected, seq + 1)
        if not carries(value, seq):
            self.problems.append((key, seq, "bad payload"))

    async def count(self, key):
        return self.next.get(key, 0)

    async def dump(self):
        return self.next, self.problems


async def ask_until_answered(call):
    """An ask, again while the asked actor restarts (an ask in flight at a kill raises ActorStoppedError)."""
    with trio.fail_after(DEADLINE):
        while True:
            try:
                return await call()
            except actors.ActorStoppedError:
                await trio.sleep(0.005)


async def tell_burst(key, sent, receivers, n, rng):
    """Tell `n` numbered messages to receivers at random, with asks mixed in; then ask each receiver how many of
    this key's tells it applied, which must be all of them: the ask travels behind the tells, resent ones included.
    The problems seen, and the counts the receivers confirmed."""
    problems = []
    names = sorted(receivers)
    for _ in range(n):
        name = rng.choice(names)
        seq = sent.get(name, 0)
        message = (key, seq, payload(rng, seq))
        if rng.random() < 0.1:
            try:
                receivers[name].tell_nowait(message)
            except actors.MailboxFullError:     # refused, not queued: told again, waiting for room
                await receivers[name].tell(message)
        else:
            await receivers[name].tell(message)
        sent[name] = seq + 1
        if rng.random() < 0.01:
            await ask_until_answered(lambda: receivers[name].proxy.count(key, timeout=DEADLINE))
    confirmed = {}
    for name in names:
        got = await ask_until_answered(lambda: receivers[name].proxy.count(key, timeout=DEADLINE))
        if got != sent.get(name, 0):
            problems.append(f"{name}: an ask after {sent.get(name, 0)} tells from {key} saw {got} applied")
        confirmed[name] = got
    return problems, confirmed


class Sender(actors.Actor):
    """Not persistent: each incarnation starts from `__init__` with a key of its own and numbers from 0."""
    restart = "always"          # back after every kill, as often as the campaign kills it
    max_restarts = 1_000_000
    restart_window = 0.2
    restart_backoff = 0.001

    def __init__(self, name):
        self.key = f"{name}:{secrets.token_hex(4)}"
        self.sent = {}

    async def burst(self, receivers, n, seed):
        problems, confirmed = await tell_burst(self.key, self.sent, receivers, n, random.Random(seed))
        return self.key, problems, confirmed


class Campaign:
    """One run's driver side: bursts from the senders and the driver, and the kills."""

    def __init__(self, system, receivers, senders, rng, kills, max_delay, log):
        self.system, self.receivers, self.senders, self.rng = system, receivers, senders, rng
        self.kills, self.max_delay, self.log = kills, max_delay, log
        self.problems = []
        self.confirmed = {}         # (receiver, key) -> the count an ask saw applied
        self.done = False
        # "again": right after a restart began; "before ready": of those, the ones whose process was seen starting
        # (recovering, or in __init__) just before
        self.killed = {"receiver": 0, "sender": 0, "again": 0, "before ready": 0}
        self.pids = set()           # every process killed, and at the end every one still listed: none may run
        self.driver_key = f"driver:{secrets.token_hex(4)}"
        self.driver_sent = {}

    def note(self, key, problems, confirmed):
        self.problems += problems
        for name, got in confirmed.items():
            self.confirmed[name, key] = max(self.confirmed.get((name, key), 0), got)

    async def sender_loop(self, name):
        while not self.done:
            try:
                self.note(*await self.senders[name].proxy.burst(self.receivers, self.rng.randrange(1, 400),
                                                                self.rng.random(), timeout=DEADLINE))
            except actors.ActorStoppedError:
                pass                # killed in the burst: the next call waits for its restart
            except actors.RemoteActorError as exc:      # a tell or an ask refused: the promise is that none is
                self.problems.append(f"{name}: {exc.type_name}: {exc.message}")

    async def driver_loop(self):
        rng = random.Random(self.rng.random())
        while not self.done:
            try:
                self.note(self.driver_key, *await tell_burst(self.driver_key, self.driver_sent, self.receivers,
                                                              rng.randrange(1, 100), rng))
            except actors.ActorsError as exc:
                self.problems.append(f"driver: {type(exc).__name__}: {exc}")
                return          # its counts are off by the refused tell: the final check would report it again
            await trio.sleep(rng.uniform(0, self.max_delay))

    async def pid_of(self, name):
        """The pid of the actor's current process, once it is not one killed already (its death not noticed yet:
        a kill would hit a zombie): starting, recovering or running."""
        with trio.fail_after(DEADLINE):
            while True:
                for row in (await self.system.status()).actors:
                    if row.name == name and row.pid and row.pid not in self.pids and row.state != "stopped":
                        return row.pid, row.state
                await trio.sleep(0.001)

    def kill(self, pid):
        """SIGKILL `pid`, noted as killed; False if it had ended already."""
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        finally:
            self.pids.add(pid)
        return True

    async def kill_loop(self):
        names = sorted(self.receivers) * 2 + sorted(self.senders)   # receivers twice as often
        n = 0
        while n < self.kills:
            name = self.rng.choice(names)
            pid, _ = await self.pid_of(name)
            await trio.sleep(self.rng.uniform(0, self.max_delay))
            if not self.kill(pid):
                continue            # that incarnation ended meanwhile: aim again
            n += 1
            self.killed["receiver" if name in self.receivers else "sender"] += 1
            if self.rng.random() < 0.25:        # again, during its restart: its recovery, or its __init__
                pid, state = await self.pid_of(name)
                await trio.sleep(self.rng.uniform(0, 0.003))
                if self.kill(pid):
                    self.killed["again"] += 1
                    self.killed["before ready"] += state != "running"     # as last seen: the kill was later
            if self.log and n % 50 == 0:
                print(f"kills={n} {self.killed} problems={len(self.problems)}", file=self.log, flush=True)
        self.done = True


async def campaign(system, rng, kills, max_delay, log):
    receivers = {}
    for name, fsync in RECEIVERS.items():
        receivers[name] = await system.spawn(Receiver, name=name,
                                             options={"fsync": fsync, "snapshot_every": rng.choice((3, 7, 20)),
                                                      # down for longer: tells pile up, up to a mailbox's worth
                                                      "restart_backoff": rng.choice((0.001, 0.001, 0.05))})
    senders = {name: await system.spawn(Sender, name, name=name) for name in SENDERS}
    run = Campaign(system, receivers, senders, rng, kills, max_delay, log)
    async with trio.open_nursery() as nursery:
        for name in senders:
            nursery.start_soon(run.sender_loop, name)
        nursery.start_soon(run.driver_loop)
        await run.kill_loop()
    for name in senders:            # a last burst from every sender's last incarnation, with no kill
        run.note(*await senders[name].proxy.burst(receivers, 50, rng.random(), timeout=DEADLINE))
    states = {}
    for name, ref in receivers.items():
        counts, problems = await ask_until_answered(lambda: ref.proxy.dump(timeout=DEADLINE))
        states[name] = (counts, problems)
        run.problems += [f"{name}: {p}" for p in problems]
        for (receiver, key), got in run.confirmed.items():
            if receiver == name and counts.get(key, 0) < got:
                run.problems.append(f"{name}: {key} has {counts.get(key, 0)} applied after an ask saw {got}")
        if counts.get(run.driver_key, 0) != run.driver_sent.get(name, 0):
            run.problems.append(f"{name}: the driver told {run.driver_sent.get(name, 0)}, "
                                f"{counts.get(run.driver_key, 0)} applied")
    for row in (await system.status()).actors:
        run.pids.add(row.pid)
    return run, states


async def recovered_states(system):
    states = {}
    for name, fsync in RECEIVERS.items():
        ref = await system.spawn(Receiver, name=name, options={"fsync": fsync})
        states[name] = await ref.proxy.dump(timeout=DEADLINE)
    return states


def leftovers(directory, tag, pids):
    """What should not be there once the systems have ended: files beside the journals and snapshots, shared
    memory of ours, live processes."""
    found = []
    for entry in sorted(os.listdir(directory)):
        name, _, rest = entry.partition(".")
        if entry == ".lock" or (name in RECEIVERS and (rest in ("snapshot", "snapshot.prev")
                                                       or (rest.startswith("journal.")
                                                           and rest[len("journal."):].isdigit()))):
            continue
        found.append(f"resilience dir: {entry}")
    found += [f"/dev/shm: {n}" for n in os.listdir(_store.SHM_DIR) if f".{tag}" in n]
    for pid in pids:
        try:
            os.kill(pid, 0)
            found.append(f"process {pid} still runs")
        except ProcessLookupError:
            pass
    return found


def run(kills, *, seed=0, max_delay=0.05, mailbox_size=256, log=None):
    """`kills` kills in one system (and some more, again during the restarts), then a second system on the same
    directory; (kills done by kind, tells applied, the problems found)."""
    tag = os.environ.setdefault(_store.TAG_ENV, secrets.token_hex(6))
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="persist-chaos-") as top:
        directory = os.path.join(top, "state")
        chaos, states = actors.run(lambda system: campaign(system, rng, kills, max_delay, log),
                                   resilience_dir=directory, mailbox_size=mailbox_size)
        again = actors.run(recovered_states, resilience_dir=directory)
        problems = list(chaos.problems)
        for name, state in states.items():
            if again[name] != state:
                problems.append(f"{name}: recovered {again[name]} in a new system, not {state}")
        problems += leftovers(directory, tag, chaos.pids)
    applied = sum(sum(counts.values()) for counts, _ in states.values())
    return chaos.killed, applied, problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=0.05, help="the longest wait before a kill (s)")
    parser.add_argument("--mailbox-size", type=int, default=256, help="also the most unacknowledged tells held")
    args = parser.parse_args()
    killed, applied, problems = run(args.kills, seed=args.seed, max_delay=args.max_delay,
                                    mailbox_size=args.mailbox_size, log=sys.stderr)
    kinds = " ".join(f"{kind.replace(' ', '_')}={n}" for kind, n in killed.items())
    print(f"seed={args.seed} kills={killed['receiver'] + killed['sender'] + killed['again']} {kinds} "
          f"tells_applied={applied} problems={len(problems)}")
    for problem in problems[:20]:
        print("  " + problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
