"""The processes bench_cluster runs on its simulated hosts, one role each:

    python -m benchmarks._cluster_peers actors ETCD_URL NODE TELLS ASKS BIG_MB BIG_COUNT
    python -m benchmarks._cluster_peers mp-server PORT TELLS ASKS
    python -m benchmarks._cluster_peers mp-client HOST PORT TELLS ASKS
    python -m benchmarks._cluster_peers raw-server PORT BIG_MB BIG_COUNT
    python -m benchmarks._cluster_peers raw-client HOST PORT BIG_MB BIG_COUNT

Servers print `ready` once they listen; measuring roles print one line `result=<json>`. Each side of a baseline does
what ours does: the same messages, the same counts, a reply at the end of a stream.
"""
from __future__ import annotations

import json
import socket
import sys
import time
from multiprocessing.connection import Client, Listener

import numpy as np

MESSAGE = {"id": 123, "name": "sensor-7", "values": [1.0, 2.0, 3.0], "ok": True, "tag": None}
AUTHKEY = b"bench-cluster"


def _result(**figures) -> None:
    print("result=" + json.dumps(figures), flush=True)


def run_actors(url: str, node: str, tells: int, asks: int, big_mb: int, big_count: int) -> None:
    import actors

    class Sink(actors.Actor):
        def __init__(self):
            self.count = 0

        async def receive(self, message):
            if type(message) is str:            # "count": asked at the end of a stream
                return self.count
            self.count += 1
            return message if type(message) is dict else None

    async def main(system):
        sink = await system.spawn(Sink, node=node)

        async def stream(message, n) -> float:
            """Seconds to tell `n` of `message` and hear the sink answer after them."""
            start = time.perf_counter()
            for _ in range(n):
                await sink.tell(message)
            await sink.ask("count")
            return time.perf_counter() - start

        await stream(MESSAGE, 1000)             # warm: the connection, the blocks, the caches
        tell_s = await stream(MESSAGE, tells)
        times = []
        for i in range(asks + 200):
            t = time.perf_counter()
            await sink.ask(MESSAGE)
            if i >= 200:
                times.append(time.perf_counter() - t)
        big = np.ones(big_mb * 1024 * 1024 // 8)
        await stream(big, 3)                    # warm: the blocks of both stores that a stream of them reuses
        big_s = await stream(big, big_count)
        _result(tell_s=tell_s, ask_times=times, big_s=big_s)

    actors.run(main, cluster=actors.ClusterOptions(url, name=f"bench-{time.monotonic_ns()}"),
               store_capacity=f"{max(512, 4 * big_mb)}M")


def mp_server(port: int, tells: int, asks: int) -> None:
    with Listener(("0.0.0.0", port), authkey=AUTHKEY) as listener:
        print("ready", flush=True)
        with listener.accept() as conn:
            for _ in range(1000):
                conn.recv()
            conn.send(1000)
            for _ in range(tells):
                conn.recv()
            conn.send(tells)
            for _ in range(asks + 200):
                conn.send(conn.recv())


def mp_client(host: str, port: int, tells: int, asks: int) -> None:
    with Client((host, port), authkey=AUTHKEY) as conn:
        for _ in range(1000):
            conn.send(MESSAGE)
        conn.recv()
        start = time.perf_counter()
        for _ in range(tells):
            conn.send(MESSAGE)
        conn.recv()
        tell_s = time.perf_counter() - start
        times = []
        for i in range(asks + 200):
            t = time.perf_counter()
            conn.send(MESSAGE)
            conn.recv()
            if i >= 200:
                times.append(time.perf_counter() - t)
    _result(tell_s=tell_s, ask_times=times)


def raw_server(port: int, big_mb: int, big_count: int) -> None:
    size = big_mb * 1024 * 1024
    buf = bytearray(size)
    view = memoryview(buf)
    with socket.create_server(("0.0.0.0", port)) as server:
        print("ready", flush=True)
        conn, _ = server.accept()
        with conn:
            for stream in (3, big_count):       # the warm-up messages, then the timed ones: acked at the end
                for _ in range(stream):
                    got = 0
                    while got < size:
                        n = conn.recv_into(view[got:])
                        if not n:
                            return
                        got += n
                conn.sendall(b"k")


def raw_client(host: str, port: int, big_mb: int, big_count: int) -> None:
    data = np.ones(big_mb * 1024 * 1024 // 8).tobytes()
    with socket.create_connection((host, port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(3):          # warm, as ours is
            conn.sendall(data)
        conn.recv(1)
        start = time.perf_counter()
        for _ in range(big_count):
            conn.sendall(data)
        conn.recv(1)
        big_s = time.perf_counter() - start
    _result(big_s=big_s)


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    if role == "actors":
        run_actors(rest[0], rest[1], *map(int, rest[2:]))
    elif role == "mp-server":
        mp_server(*map(int, rest))
    elif role == "mp-client":
        mp_client(rest[0], *map(int, rest[1:]))
    elif role == "raw-server":
        raw_server(*map(int, rest))
    elif role == "raw-client":
        raw_client(rest[0], *map(int, rest[1:]))
    else:
        sys.exit(f"unknown role {role!r}")
