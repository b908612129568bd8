"""The driver's registry (actors/_runtime/registry.py): names and lookups, class registrations before
and after startup.

Every system runs in this process through `run()` (a deadline around `main`), with real actor processes."""
import pytest
import trio

import actors
from actors import ActorNotFoundError, ActorsError
from _helpers.actors import (
    Counter,
    Echo,
    Finder,
    LateAsker,
    LateReceiver,
    LateRegistrar,
    LateThing,
    Parent,
    Point,
    PointActor,
)
from _helpers.processes import run


def test_lookup_by_name_and_actor_not_found():
    async def main(system):
        target = await system.spawn(Echo, name="target")
        finder = await system.spawn(Finder, name="finder")
        assert await system.lookup("target") == target
        with pytest.raises(ActorNotFoundError, match="nobody"):
            await system.lookup("nobody")
        with pytest.raises(LookupError):
            await system.lookup("nobody")
        assert await finder.ask("target") == ("found", target, ("echo", "target", "ping"))
        kind, message = await finder.ask("nobody")
        assert kind == "missing" and "nobody" in message
        await system.stop(target)
        with pytest.raises(ActorNotFoundError):
            await system.lookup("target")
        assert (await finder.ask("target"))[0] == "missing"

    run(main)


def test_duplicate_names_are_rejected():
    async def main(system):
        first = await system.spawn(Counter, 1, name="dup")
        with pytest.raises(ActorsError, match="dup"):
            await system.spawn(Echo, name="dup")
        assert await first.ask(1) == 2                       # the first one is untouched
        parent = await system.spawn(Parent, name="dup-parent")
        kind, message = await parent.ask(("spawn", "Echo", "dup"))
        assert kind in ("ActorsError", "SpawnError") and "dup" in message

        outcomes = []

        async def try_spawn():
            try:
                outcomes.append(await system.spawn(Echo, name="raced"))
            except ActorsError as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(try_spawn)
            nursery.start_soon(try_spawn)
        refs = [o for o in outcomes if isinstance(o, actors.ActorRef)]
        assert len(refs) == 1 and len(outcomes) == 2
        assert await refs[0].ask("x") == ("echo", "raced", "x")
        assert await system.lookup("dup") == first

    run(main)


def test_class_registered_before_run_exists_in_every_actor():
    actors.register_class(Point)

    async def main(system):
        ref = await system.spawn(PointActor, name="points")
        res = await ref.ask(Point(1, 2))
        assert res["qualname"] == "Point"
        assert res["is_point"] is True
        assert (res["x"], res["y"]) == (1, 2)
        moved = res["moved"]
        assert type(moved) is Point
        assert (moved.x, moved.y) == (2, 3)

    run(main)


def test_class_registered_late_inside_an_actor_reaches_another_actor():
    assert LateThing not in actors.registered_classes()

    async def main(system):
        registrar = await system.spawn(LateRegistrar, name="registrar")
        receiver = await system.spawn(LateReceiver, name="receiver")
        is_late, qualname, value, thing = await registrar.ask(receiver)
        assert (is_late, qualname, value) == (True, "LateThing", 7)
        assert type(thing) is LateThing and thing.value == 7

    run(main)


def test_class_registered_late_inside_an_actor_is_reported_to_the_driver():
    assert LateThing not in actors.registered_classes()

    async def main(system):
        registrar = await system.spawn(LateRegistrar, name="registrar")
        receiver = await system.spawn(LateReceiver, name="receiver")
        await registrar.ask(receiver)       # the receiver pulled LateThing from the driver: the driver has it
        assert LateThing in actors.registered_classes()
        thing = await registrar.proxy.make(11)
        assert type(thing) is LateThing
        assert thing.value == 11

    run(main)


def test_class_registered_late_inside_an_actor_reaches_an_asking_actor():
    assert LateThing not in actors.registered_classes()

    async def main(system):
        registrar = await system.spawn(LateRegistrar, name="registrar")
        asker = await system.spawn(LateAsker, name="asker")
        assert await asker.ask(registrar) == (True, 3)

    run(main)
