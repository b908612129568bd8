"""ActorRef (actors/_ref.py): tell, tell_nowait, ask and the proxy; refs inside messages and an actor's own ref.

Every system runs in this process through `run()` (a deadline around `main`), with real actor processes."""

import inspect
import threading

import pytest
import trio

import actors
from actors import RemoteActorError
from _helpers.actors import (
    Counter,
    Echo,
    Forwarder,
    Parent,
    Pinger,
    Ponger,
)
from _helpers.processes import run, wait_until


def test_counter_tell_tell_nowait_ask_and_proxy():
    async def main(system):
        ref = await system.spawn(Counter, 10)
        assert isinstance(ref, actors.ActorRef)
        await ref.tell(1)
        ref.tell_nowait(1)
        assert await ref.ask(1) == 13
        assert await ref.proxy.reset(5) == 5
        assert await ref.ask(0) == 5
        assert await ref.proxy.reset(value=7) == 7
        assert await ref.ask(0) == 7
        assert await ref.proxy.received_count() == 5      # proxy calls are not messages to `receive`
        return "done"

    assert run(main) == "done"


def test_timestamps_ids_and_decimals_travel_to_an_actor_and_back_as_themselves():
    import datetime as dt
    import decimal
    import uuid
    import zoneinfo
    tick = {"at": dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris")),
            "id": uuid.UUID(int=42), "price": decimal.Decimal("19.990"), "every": dt.timedelta(seconds=1.5),
            "day": dt.date(2024, 2, 29), "utc": dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)}

    async def main(system):
        echo = await system.spawn(Echo)
        return (await echo.ask(tick))[2]

    back = run(main)
    assert back == tick
    assert back["at"].fold == 1 and back["at"].tzinfo.key == "Europe/Paris"
    assert str(back["price"]) == "19.990" and back["utc"].tzinfo is dt.timezone.utc


def test_tell_nowait_from_other_threads_is_sent_by_the_systems_thread_once():
    async def main(system):
        counter = await system.spawn(Counter)
        await trio.to_thread.run_sync(counter.tell_nowait, 1)          # a thread trio started

        def plain_thread():                                           # and one it did not
            thread = threading.Thread(target=counter.tell_nowait, args=(10,))
            thread.start()
            thread.join(30)
            return thread.is_alive()

        assert await trio.to_thread.run_sync(plain_thread) is False
        assert await counter.ask(0) == 11
        assert await counter.proxy.received_count() == 3
        return "done"

    assert run(main) == "done"


def test_tell_from_another_thread_raises_before_sending_anything():
    async def main(system):
        counter = await system.spawn(Counter)

        def tell_from_thread():
            try:
                counter.tell(1)
            except actors.ActorsError as exc:
                return str(exc)

        said = await trio.to_thread.run_sync(tell_from_thread)
        assert said == ("cannot tell 'Counter-1' from this thread: `tell` runs in the system's trio thread; from "
                        "another thread, call ref.tell_nowait(message), which hands the send to it"), said
        assert await counter.ask(0) == 0                            # nothing was sent
        assert await counter.proxy.received_count() == 1
        return "done"

    assert run(main) == "done"


def test_asks_and_system_calls_from_another_thread_raise_before_sending_anything():
    # they ran the system's endpoint from the wrong thread: trio's internals then failed, or the caller hung
    async def main(system):
        counter = await system.spawn(Counter)

        def from_thread(call, *args):
            try:
                trio.run(call, *args)
            except actors.ActorsError as exc:
                return str(exc)

        said = [await trio.to_thread.run_sync(from_thread, *call) for call in [
            (counter.ask, 1), (counter.proxy.reset, 5), (system.spawn, Counter), (system.lookup, "Counter-1"),
            (system.stop, counter)]]
        fix = ("from this thread: it runs in the system's trio thread; from another thread, send with "
               "ref.tell_nowait(message), which hands the send to it")
        assert said == [f"cannot ask 'Counter-1' {fix}", f"cannot call reset of 'Counter-1' {fix}",
                        f"cannot spawn {fix}", f"cannot lookup {fix}", f"cannot stop {fix}"], said
        assert await counter.ask(0) == 0                            # nothing was sent, nothing stopped
        assert [row.name for row in (await system.status()).actors] == ["Counter-1"]
        return counter

    counter = run(main)
    # and once the system has ended, its refs say so
    gone = r"^cannot (tell|ask) 'Counter-1': no system runs in this process \(refs work while the system that made"
    with pytest.raises(actors.ActorsError, match=gone):
        counter.tell_nowait(1)
    with pytest.raises(actors.ActorsError, match=gone):
        counter.tell(1)
    with pytest.raises(actors.ActorsError, match=gone):
        trio.run(counter.ask, 1)


def test_a_message_larger_than_the_whole_store_raises_at_once():
    async def main(system):
        counter = await system.spawn(Counter)
        said = []
        for send in (counter.tell, counter.tell_nowait, counter.ask):
            with trio.fail_after(10):           # at once, not after the 30 s a full store gets
                with pytest.raises(actors.StoreFullError) as info:
                    await send(bytes(100 << 20)) if send is not counter.tell_nowait else send(bytes(100 << 20))
            said.append(str(info.value))
        assert await counter.proxy.received_count() == 0
        return said

    said = run(main)                            # a store of 64 MiB
    assert said == 3 * ["cannot send a message of 104857728 bytes: it is larger than the whole store (67108864 "
                        "bytes); start the system with a larger store_capacity"], said


def test_tell_sends_when_called_and_its_await_waits_only_while_the_mailbox_is_full():
    """`tell` is not a coroutine function: the call sends, and returns an awaitable that is done already unless the
    mailbox is full (then it waits for room). trio also takes it where it takes an async function."""
    async def main(system):
        ref = await system.spawn(Counter, 0)
        pending = ref.tell(5)
        assert await ref.ask(0) == 5                # sent by the call: the ask followed it on the same link
        assert await pending is None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ref.tell, 2)
        assert await ref.ask(0) == 7
        returned = [ref.tell(1) for _ in range(100)]       # past the mailbox of 16, without waiting
        assert returned[0] is returned[1]                   # nothing to wait for: one done awaitable for all
        waiting = [a for a in returned if a is not returned[0]]
        assert waiting and all(inspect.iscoroutine(a) for a in waiting)
        for awaitable in returned:
            await awaitable
        assert await ref.ask(0) == 107
        return "done"

    assert run(main, mailbox_size=16) == "done"


def test_proxy_rejects_private_unknown_and_hook_methods():
    async def main(system):
        ref = await system.spawn(Counter, 0)
        with pytest.raises(AttributeError):
            ref.proxy._secret
        with pytest.raises(RemoteActorError) as info:
            await ref.proxy.no_such_method()
        assert info.value.type_name == "AttributeError"
        assert "no_such_method" in info.value.message
        with pytest.raises(RemoteActorError) as info:
            await ref.proxy.on_stop()
        assert info.value.type_name == "AttributeError"
        with pytest.raises(RemoteActorError) as info:
            await ref.proxy.not_async()               # not an `async def`: a clear error, not a hang
        assert info.value.type_name == "TypeError"
        assert await ref.ask(2) == 2                  # and the actor goes on
        assert await ref.proxy.received_count() == 1

    run(main)


def test_actor_knows_its_ref_and_spawns_and_asks_a_child():
    async def main(system):
        parent = await system.spawn(Parent, name="parent")
        me = await parent.ask("whoami")
        assert me == parent and me.name == "parent"
        child, answer = await parent.ask("spawn-child")
        assert answer == ("echo", "child-of-parent", "hi")
        assert child.name == "child-of-parent"
        assert await system.lookup("child-of-parent") == child
        assert await child.ask("from-driver") == ("echo", "child-of-parent", "from-driver")

    run(main)


def test_actor_replies_through_a_ref_it_was_sent():
    async def main(system):
        pinger = await system.spawn(Pinger, name="pinger")
        ponger = await system.spawn(Ponger, name="ponger")
        await pinger.tell(("start", ponger, 100))
        pongs = []

        async def all_back():
            pongs[:] = await pinger.ask(("pongs",))
            return len(pongs) >= 100
        await wait_until(all_back, what="100 pongs")
        assert pongs == [("ponger", i) for i in range(100)]

    run(main)


def test_actor_refs_travel_inside_messages():
    async def main(system):
        e1 = await system.spawn(Echo, name="e1")
        e2 = await system.spawn(Echo, name="e2")
        fwd = await system.spawn(Forwarder, name="forwarder")
        result = await fwd.ask({"targets": [e1, e2], "note": "n"})
        assert result["answers"] == [("echo", "e1", "n"), ("echo", "e2", "n")]
        assert result["types"] == ["ActorRef", "ActorRef"]
        assert result["refs"] == [e1, e2]
        assert [r.name for r in result["refs"]] == ["e1", "e2"]
        assert {*result["refs"], e1, e2} == {e1, e2}          # equal refs hash alike
        back = result["refs"][1]
        assert await back.ask("again") == ("echo", "e2", "again")

    run(main)
