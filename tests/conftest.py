"""Shared fixtures. Every test is checked for leaked shared memory: /dev/shm must hold no segment of ours that this
test created and left behind."""
import os

import pytest

from actors import _store


def _ours():
    # Segments this test can have left: made by this process, or by a process that has since died (a
    # subprocess that leaked). Those of other live processes (another run on the machine) are not ours.
    me = f"{_store.PREFIX}{os.getpid()}."
    return {n for n in _store.our_segments() if n.startswith(me) or not _store.owner_alive(n)}


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
