"""Baselines the runtime benchmarks measure in the same run: multiprocessing.Pipe (and Ray, when installed), and
the CPU time of the processes taking part."""
from __future__ import annotations

import multiprocessing as mp
import os
import time

CTX = mp.get_context("fork")


def cpu_seconds(pids) -> float:
    """CPU time used so far by the processes `pids`, all their threads, in seconds, to the nanosecond (from
    /proc/<pid>/task/*/schedstat; clock ticks would be 10 ms coarse). A process that has gone counts 0."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass
    return total * 1e-9


class PipeRing:
    """`n` processes in a ring of `multiprocessing.Pipe`s passing a token (a hop count) on: one wakeup per hop,
    as in the actors' ring. Started once, then timed in as many runs as wanted."""

    def __init__(self, n: int):
        self.ends = [CTX.Pipe(duplex=False) for _ in range(n)]     # node i reads ends[i], writes ends[i + 1]
        self.done_r, done_w = CTX.Pipe(duplex=False)
        self.procs = [CTX.Process(target=_ring_node, args=(self.ends[i][0], self.ends[(i + 1) % n][1], done_w))
                      for i in range(n)]
        for p in self.procs:
            p.start()
        self.pids = [os.getpid()] + [p.pid for p in self.procs]

    def run(self, hops: int) -> tuple[float, float]:
        """(seconds, CPU seconds of every process in the ring and this one) for `hops` hops of the token."""
        cpu = cpu_seconds(self.pids)
        start = time.perf_counter()
        self.ends[0][1].send(hops)
        self.done_r.recv()
        return time.perf_counter() - start, cpu_seconds(self.pids) - cpu

    def close(self) -> None:
        self.ends[0][1].send(None)
        for p in self.procs:
            p.join(60)


def _ring_node(conn_in, conn_out, done):
    while True:
        hops = conn_in.recv()
        if hops is None:
            conn_out.send(None)
            return
        if hops <= 1:
            done.send(True)
        else:
            conn_out.send(hops - 1)


def _pipe_sink(conn, n, done):
    for _ in range(n):
        conn.recv()
    done.send(True)


def pipe_one_way(message, n: int) -> float:
    """Seconds for `n` messages from one process to another over a Pipe (until the receiver has them all)."""
    recv_end, send_end = CTX.Pipe(duplex=False)
    done_r, done_w = CTX.Pipe(duplex=False)
    proc = CTX.Process(target=_pipe_sink, args=(recv_end, n, done_w))
    proc.start()
    start = time.perf_counter()
    for _ in range(n):
        send_end.send(message)
    done_r.recv()
    elapsed = time.perf_counter() - start
    proc.join(60)
    return elapsed


def _pipe_fan_in_sink(conns, n_total, done):
    from multiprocessing.connection import wait
    got = 0
    while got < n_total:
        for c in wait(conns):
            c.recv()
            got += 1
    done.send(True)


def _pipe_source(conn, message, n, go):
    go.wait()
    for _ in range(n):
        conn.send(message)


def pipe_fan_in(message, senders: int, n_each: int) -> float:
    """Seconds for `senders` processes to each send `n_each` messages to one receiver over their own Pipes."""
    ends = [CTX.Pipe(duplex=False) for _ in range(senders)]
    done_r, done_w = CTX.Pipe(duplex=False)
    go = CTX.Event()
    sink = CTX.Process(target=_pipe_fan_in_sink, args=([r for r, _ in ends], senders * n_each, done_w))
    sink.start()
    sources = [CTX.Process(target=_pipe_source, args=(w, message, n_each, go)) for _, w in ends]
    for p in sources:
        p.start()
    time.sleep(0.2)
    start = time.perf_counter()
    go.set()
    done_r.recv()
    elapsed = time.perf_counter() - start
    for p in [sink, *sources]:
        p.join(60)
    return elapsed


def _pipe_echo(conn):
    while True:
        msg = conn.recv()
        if msg is None:
            return
        conn.send(msg)


def pipe_round_trips(message, n: int) -> tuple[list[float], float]:
    """Each of `n` request/reply round trips over a duplex Pipe, in seconds; and the CPU seconds both processes
    used per round trip."""
    ours, theirs = CTX.Pipe()
    proc = CTX.Process(target=_pipe_echo, args=(theirs,))
    proc.start()
    for _ in range(min(n, 500)):
        ours.send(message)
        ours.recv()
    times = []
    pids = (os.getpid(), proc.pid)
    cpu = cpu_seconds(pids)
    for _ in range(n):
        t = time.perf_counter()
        ours.send(message)
        ours.recv()
        times.append(time.perf_counter() - t)
    cpu = cpu_seconds(pids) - cpu
    ours.send(None)
    proc.join(60)
    return times, cpu / n


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True
