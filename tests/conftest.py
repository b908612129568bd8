"""Shared fixtures. Every test is checked for leaked shared memory: /dev/shm must hold no segment of ours that this
test created and left behind."""
import os

import pytest

from actors import _store


def _ours():
    return set(_store.our_segments())


@pytest.fixture(autouse=True)
def no_leaked_segments():
    before = _ours()
    yield
    leaked = _ours() - before
    if leaked:
        for name in leaked:       # unlink them, so one leak does not fail every later test
            try:
                os.unlink(os.path.join(_store.SHM_DIR, name))
            except FileNotFoundError:
                pass
        pytest.fail(f"test left shared memory segments behind: {sorted(leaked)}")


@pytest.fixture
def store():
    with _store.ObjectStore(capacity="64M") as s:
        yield s
