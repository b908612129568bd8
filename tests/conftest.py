"""Shared fixtures. Every test is checked for leaked shared memory: /dev/shm must hold no segment of ours that this
test created and left behind."""
import os
import secrets

import pytest

from actors import _store
from _helpers.processes import leftover_segments

# Every process of this run (pytest, its subprocesses, their actors: the variable is inherited) puts this tag in the
# names of the segments it makes, so that the leak check counts and removes this run's segments only, never those of
# another run on the same machine.
os.environ[_store.TAG_ENV] = secrets.token_hex(6)


@pytest.fixture(autouse=True)
def no_leaked_segments():
    before = leftover_segments()
    yield
    leaked = leftover_segments() - before
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


@pytest.fixture(autouse=True)
def no_leaked_registrations():
    """Unregister every class a test registered (or that an actor reported to the driver), so that no
    registration leaks into another test."""
    import actors
    before = set(actors.registered_classes())
    yield
    for cls in actors.registered_classes():
        if cls not in before:
            actors.unregister_class(cls)
