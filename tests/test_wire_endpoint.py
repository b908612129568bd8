"""The endpoint (actors/_wire/endpoint.py): sending to peers that stopped or died, what cannot be sent, numpy
arrays through the store.

Every system runs in this process through `run()` (a deadline around `main`), with real actor processes."""
import os
import select

import numpy as np
import pytest
import trio

from actors import ActorStoppedError, RemoteActorError, SerializationError
from _helpers.actors import (
    ArrayChecker,
    ArrayMaker,
    BigSink,
    Counter,
    FifoWriter,
    Opaque,
    QuietTeller,
    Relay,
    Sink,
    Suicidal,
)
from _helpers.processes import gone, minor_faults, run, wait_until


def test_tells_from_an_actor_to_a_stopped_actor_it_never_contacted_raise_actor_stopped():
    async def main(system):
        ref = await system.spawn(Counter, 0, name="stopped-early")
        relay = await system.spawn(Relay, name="relay")
        await system.stop(ref)
        for op in ("tell", "tell_nowait", "ask"):
            kind, message = await relay.ask((op, ref, 1))
            assert kind == "ActorStoppedError", (op, kind, message)

    run(main)


def test_tell_errors_name_the_stopped_actor():
    async def main(system):
        ref = await system.spawn(Counter, 0, name="stopped-early")
        relay = await system.spawn(Relay, name="relay")
        await system.stop(ref)
        for op in ("tell", "tell_nowait"):
            kind, message = await relay.ask((op, ref, 1))
            assert kind == "ActorStoppedError" and "stopped-early" in message, (op, kind, message)

    run(main)


def test_tells_to_a_stopped_actor_already_contacted_raise_actor_stopped():
    async def main(system):
        relay = await system.spawn(Relay, name="relay")
        for k in range(3):
            ref = await system.spawn(Counter, 0, name=f"short-lived-{k}")
            await ref.tell(1)
            assert await ref.ask(1) == 2
            assert await relay.ask(("ask", ref, 1)) == ("answer", 3)
            await system.stop(ref)
            with pytest.raises(ActorStoppedError):
                await ref.tell(1)
            with pytest.raises(ActorStoppedError):
                ref.tell_nowait(1)
            for op in ("tell", "tell_nowait"):
                kind, message = await relay.ask((op, ref, 1))
                assert kind == "ActorStoppedError", (op, kind, message)

    run(main, timeout=40)


def test_tell_to_an_actor_that_died_raises_actor_stopped():
    async def main(system):
        ref = await system.spawn(Suicidal, name="dies-on-a-tell")
        await ref.tell("die")
        # the driver learns of the exit, then forgets the name
        await wait_until(lambda: gone(system, "dies-on-a-tell"), what="the actor to be gone")
        with pytest.raises(ActorStoppedError):
            await ref.tell("anyone there?")

    run(main, timeout=40)


def test_a_tell_that_waited_for_room_in_the_store_gives_the_room_back_when_its_receiver_stopped_meanwhile():
    async def main(system):
        sink = await system.spawn(Sink, name="sink")
        await sink.ask("warm")
        base = system.store.stats()["used"]
        hog = [system.store.put(np.ones(7 << 20))]         # 56 MiB of a 64 MiB store, held
        raised = []

        async def tell():
            try:
                await sink.tell(np.ones(2 << 20))           # 16 MiB: it waits for room
            except ActorStoppedError as exc:
                raised.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(tell)
            await trio.testing.wait_all_tasks_blocked()
            await system.stop(sink)                         # its link is dead: the tell cannot go out
            hog.clear()                                     # room for the tell, which finds it has nowhere to go

        async def back():
            return system.store.stats()["used"] <= base
        await wait_until(back, timeout=10, what="the store's use to fall back")
        return len(raised)

    assert run(main, timeout=60) == 1


def test_a_tell_to_an_idle_link_leaves_before_the_sender_yields(tmp_path):
    # Its send is how the sender learns whether the peer is still there, so it happens in the tell itself; the
    # driver's task blocks outside trio here, so nothing but the tell can have written the record.
    fifo = str(tmp_path / "told")
    os.mkfifo(fifo)

    async def main(system):
        ref = await system.spawn(FifoWriter, name="writer")
        assert await ref.ask("ready") == "ready"
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            ref.tell_nowait(fifo)
            readable, _, _ = select.select([fd], [], [], 20)
            assert readable, "the tell did not leave until the sender yielded"
            assert os.read(fd, 1) == b"x"
        finally:
            os.close(fd)

    run(main)


def test_tells_inside_a_handler_leave_at_the_batch_end_without_waking_the_flusher():
    async def main(system):
        counter = await system.spawn(Counter, 0, name="counter")
        teller = await system.spawn(QuietTeller, name="teller")
        assert await teller.ask(counter) == (False, False)
        assert await teller.ask(counter) == (False, False)     # an established, idle link too
        # and the tells did leave (from another sender than our proxy call: they may arrive after it)
        async def all_arrived():
            return await counter.proxy.received_count() == 4
        await wait_until(all_arrived, timeout=10, what="the 4 tells to arrive")

    run(main)


def test_unencodable_message_raises_at_the_sender_and_sends_nothing():
    async def main(system):
        ref = await system.spawn(Counter, 0, name="counter")
        await ref.tell(1)
        assert await ref.proxy.received_count() == 1
        objects = system.store.stats()["objects"]

        with pytest.raises(SerializationError) as info:
            await ref.tell({"a": [1, 2, Opaque()]})
        assert "obj['a'][2]" in str(info.value) and "Opaque" in str(info.value)
        with pytest.raises(SerializationError) as info:
            ref.tell_nowait((0, {"k": Opaque()}))
        assert "obj[1]['k']" in str(info.value)
        with pytest.raises(SerializationError) as info:
            await ref.ask([Opaque()], timeout=30)
        assert "obj[0]" in str(info.value)
        with pytest.raises(SerializationError):
            await ref.proxy.reset(Opaque())

        assert system.store.stats()["objects"] == objects   # nothing was left in the store either
        assert await ref.proxy.received_count() == 1        # and nothing arrived
        assert await ref.ask(1) == 2

        # an unencodable answer: the asker gets the reason, not a hang
        with pytest.raises(RemoteActorError) as info:
            await ref.proxy.give_unencodable()
        assert info.value.type_name == "SerializationError"
        assert "obj['bad'][0]" in info.value.message
        assert await ref.ask(0) == 2

    run(main)


def test_numpy_arrays_travel_read_only_and_equal():
    async def main(system):
        checker = await system.spawn(ArrayChecker, name="checker")
        maker = await system.spawn(ArrayMaker, name="maker")
        for n in (4000, 1 << 20):                              # 32 KB and 8 MB
            expected = np.arange(n, dtype=np.float64).reshape(-1, 4) * 1.5
            res = await maker.ask((checker, n))
            assert res["writeable"] is False
            assert res["wrote"] is False
            assert res["shape"] == (n // 4, 4)
            assert res["dtype"] == "float64"
            assert res["sum"] == float(expected.sum())
            assert np.array_equal(res["array"], expected)
            assert not res["array"].flags.writeable

        mine = np.linspace(0, 1, 1000).astype(np.float32)
        res = await checker.ask(("check", mine))
        assert res["writeable"] is False and res["wrote"] is False
        assert np.array_equal(res["array"], mine) and res["array"].dtype == np.float32
        assert mine.flags.writeable                             # the sender's array is untouched

    run(main)


# -- large messages ---------------------------------------------------------------------------------------------------

def test_an_actor_decodes_a_stream_of_1_mib_messages_into_warm_memory():
    # glibc's defaults gave each decoded 1 MiB bytes object back to the kernel when freed, so the next one faulted
    # its pages in again (about 60 faults a message); an actor keeps large allocations on its heap.
    async def main(system):
        sink = await system.spawn(BigSink, name="sink")
        pid = await sink.ask("pid")
        payload = bytes(1 << 20)
        for _ in range(20):
            await sink.tell(payload)
        assert await sink.ask("count") == 20
        before = minor_faults(pid)
        for _ in range(100):
            await sink.tell(payload)
        assert await sink.ask("count") == 120
        per_message = (minor_faults(pid) - before) / 100
        assert per_message < 20, f"{per_message:.1f} page faults per 1 MiB message"

    run(main)


def test_a_receiver_that_keeps_the_large_messages_it_gets_does_not_hold_up_its_sender():
    # A sender keeps a few large messages ahead of its receiver at most, but a receiver that holds on to them never
    # frees them: the sender waits a spin for them, then stops waiting.
    async def main(system):
        keeper = await system.spawn(BigSink, True, name="keeper")
        arrays = [np.full(1 << 17, i, dtype=np.float64) for i in range(40)]      # 1 MiB each
        for arr in arrays:
            await keeper.tell(arr)
        assert await keeper.ask("count") == 40

    run(main, timeout=60, store_capacity="256M")
