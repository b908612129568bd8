"""The allocator under kill -9: a process that dies inside the allocator's lock leaves it consistent.

Real processes on a real store: a child dies holding the lock with an operation half done (a test-only hook), or
processes in tight put/free loops are killed at random moments (tests/chaos/arena_chaos.py, which also runs
thousands of kills from the command line).
"""
import multiprocessing as mp
import os

import pytest

import actors
from chaos import arena_chaos

CTX = mp.get_context("spawn")
CHAOS_KILLS = int(os.environ.get("ACTORS_CHAOS_KILLS", "300"))


def _die_in_lock(name, step):
    actors.ObjectStore.attach(name)._arena._test_die_in_lock(step)


def _child_dies_in_lock(store, step):
    proc = CTX.Process(target=_die_in_lock, args=(store.name, step))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0


def test_a_fresh_store_checks_clean(store):
    refs = [store.put(b"x" * n) for n in (1, 100, 5000, 70000)]
    del refs[1]
    assert store._arena.check() == []


def test_the_checker_sees_a_list_cut_short(store):
    # The control: a holder that died with free list 1 cut short is an inconsistency the checker reports, read
    # without the lock (which would repair it).
    refs = [store.put(i) for i in range(4)]
    del refs[1], refs[2]
    _child_dies_in_lock(store, 1)
    problems = store._arena._check_unlocked()
    assert any("on no free list" in p for p in problems), problems
    assert store._arena.check() == []           # taking the lock repaired it


def test_no_block_is_handed_out_twice_after_a_holder_died_in_the_lock(store):
    a, b, c, d = (store.put(i) for i in range(4))
    assert [r.offset for r in (a, b, c, d)] == [0, 128, 256, 384]      # the layout this reproduction relies on
    del b, d                        # free list 1: 384, then 128
    _child_dies_in_lock(store, 1)   # it took 384 off the list and died holding the lock
    e = store.put(4)
    f = store.put(5)
    del c                           # 256's buddy, 384, is marked free: merging them must not revive a stale list
    g = store.put(6)
    offsets = [r.offset for r in (a, e, f, g)]
    assert len(set(offsets)) == 4, offsets
    assert store._arena.check() == []
    assert store.stats()["rebuilds"] == 1


@pytest.mark.parametrize("step", [1, 2, 3], ids=["list-cut", "alloc-split", "free-merge"])
def test_every_half_done_operation_is_repaired(store, step):
    refs = [store.put(b"x" * n) for n in (1, 300, 1, 5000, 1, 1)]
    del refs[0], refs[2]
    before = store.stats()
    _child_dies_in_lock(store, step)
    assert store._arena.check() == []
    after = store.stats()
    assert after["rebuilds"] == before["rebuilds"] + 1
    assert (after["used"], after["objects"]) == (before["used"], before["objects"])    # rolled back / forward
    more = [store.put(b"y" * n) for n in range(0, 20000, 500)]
    assert len({r.offset for r in refs + more}) == len(refs) + len(more)
    assert store._arena.check() == []


def test_chaos_of_kills_in_tight_put_free_loops():
    kills, bad, first, rebuilds = arena_chaos.run(CHAOS_KILLS, seed=1)
    assert (kills, bad) == (CHAOS_KILLS, 0), first
