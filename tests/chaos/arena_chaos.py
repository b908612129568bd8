"""Allocator chaos: processes in tight put/free loops on one store, killed with SIGKILL at random moments.

After each kill the allocator is checked (`Arena.check`), and what the killed process held is reclaimed. A kill
inside the allocator's lock is caught by the next locker, which rebuilds the free lists; the check counts any
inconsistency left. The suite runs a few dozen kills (tests/test_arena.py); run thousands from the command line:

    python tests/chaos/arena_chaos.py --kills 2000
"""
import argparse
import os
import random
import select
import signal
import sys
import time

import actors


def _loop(store, seed, ready_fd):
    # Child: puts of mixed sizes, frees at random, at most 64 live objects; never returns.
    rng = random.Random(seed)
    live = []
    os.write(ready_fd, b"r")
    while True:
        if len(live) < 64 and rng.random() < 0.55:
            try:
                live.append(store.put(b"x" * rng.choice((1, 50, 200, 3000, 40000)), timeout=0))
            except actors.StoreFullError:
                live.clear()
        elif live:
            live.pop(rng.randrange(len(live)))


def _spawn(store, seed):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _loop(store, seed, w)
        finally:
            os._exit(1)
    os.close(w)
    ready, _, _ = select.select([r], [], [], 30)
    os.close(r)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise RuntimeError("a chaos worker did not start within 30 s")
    return pid


def run(kills, *, seed=0, workers=2, capacity="64M", max_delay=0.02, log=None):
    """Kill one of `workers` looping processes `kills` times; (kills done, kills after which the allocator was
    inconsistent, the first problems found)."""
    rng = random.Random(seed)
    bad = 0
    first = []
    with actors.ObjectStore(capacity=capacity) as store:
        arena = store._arena
        pids = [_spawn(store, rng.random()) for _ in range(workers)]
        try:
            for n in range(kills):
                i = rng.randrange(workers)
                time.sleep(rng.uniform(0, max_delay))      # a random moment in the victim's loop
                os.kill(pids[i], signal.SIGKILL)
                os.waitpid(pids[i], 0)
                problems = arena.check()
                if problems:
                    bad += 1
                    first = first or problems
                arena.reclaim(pids[i])
                pids[i] = _spawn(store, rng.random())
                if log and (n + 1) % 100 == 0:
                    print(f"kills={n + 1} inconsistencies={bad} rebuilds={arena.stats()['rebuilds']}", file=log,
                          flush=True)
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            for pid in pids:
                arena.reclaim(pid)
        if arena.check():
            bad += 1
        rebuilds = arena.stats()["rebuilds"]
    return kills, bad, first, rebuilds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    kills, bad, first, rebuilds = run(args.kills, seed=args.seed, workers=args.workers, log=sys.stderr)
    print(f"kills={kills} inconsistencies={bad} rebuilds={rebuilds}")
    for problem in first:
        print("  " + problem)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
