"""numpy frames through three stages, with no copy of any frame.

The source fills each frame in place in shared memory (actors.shared_array) and sends it: the message *is* the
frame. Each stage reads its input as a read-only view into shared memory and writes its output straight into a new
shared array, which it sends on. No stage ever copies a frame between processes.

    actors run examples/pipeline.py [FRAMES]
"""
import sys

import numpy as np

import actors

SHAPE = (480, 640)
END = "end"         # asked after the last frame: answered once every frame has gone through


class Stage(actors.Actor):
    """Applies `op` to each frame and sends the result to `downstream`."""

    def __init__(self, op, downstream):
        self.op = op
        self.downstream = downstream

    async def receive(self, frame):
        if isinstance(frame, str):                # END: behind every frame, on the same connections
            return await self.downstream.ask(frame)
        assert not frame.flags.writeable          # a view into shared memory, not a copy
        out = actors.shared_array(frame.shape, np.float32)
        if self.op == "scale":
            np.multiply(frame, 0.5, out=out)
        else:                                     # "clip"
            np.clip(frame, 0.0, 100.0, out=out)
        await self.downstream.tell(out)


class Sink(actors.Actor):
    def __init__(self):
        self.frames = 0
        self.total = 0.0

    async def receive(self, frame):
        if isinstance(frame, str):                # END: every frame before it has been added
            return self.frames, self.total
        self.frames += 1
        self.total += float(frame.sum())


async def main(system):
    frames = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    sink = await system.spawn(Sink, name="sink")
    clip = await system.spawn(Stage, "clip", sink, name="clip")
    scale = await system.spawn(Stage, "scale", clip, name="scale")
    for i in range(frames):
        frame = actors.shared_array(SHAPE, np.float32)
        frame[:] = i                                # filled in place
        await scale.tell(frame)
    # Messages from one sender arrive in order, so END, asked after the last frame, reaches each stage behind the
    # frames; each stage passes it on as an ask, and the sink's answer comes back once it has added every frame.
    count, total = await scale.ask(END)
    expected = sum(min(i * 0.5, 100.0) for i in range(frames)) * SHAPE[0] * SHAPE[1]
    print(f"{count} frames of {SHAPE[0]}x{SHAPE[1]} float32 through scale -> clip -> sink; "
          f"checksum {total:.0f} (expected {expected:.0f})")
    assert count == frames and abs(total - expected) < 1e-6 * expected


if __name__ == "__main__":
    actors.run(main)
