"""Baselines the runtime benchmarks measure in the same run: multiprocessing.Pipe (and Ray, when installed)."""
from __future__ import annotations

import multiprocessing as mp
import time

CTX = mp.get_context("fork")


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


def pipe_round_trips(message, n: int) -> list[float]:
    """Each of `n` request/reply round trips over a duplex Pipe, in seconds."""
    ours, theirs = CTX.Pipe()
    proc = CTX.Process(target=_pipe_echo, args=(theirs,))
    proc.start()
    for _ in range(min(n, 500)):
        ours.send(message)
        ours.recv()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        ours.send(message)
        ours.recv()
        times.append(time.perf_counter() - t)
    ours.send(None)
    proc.join(60)
    return times


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True
