"""numpy frames through a stage on another node of a cluster, and back to a sink on this one.

The program's node makes each frame in its own shared memory (actors.shared_array) and sends it to the `scale` stage,
which runs on the node labelled role=worker. The frame crosses the network with one copy, from this node's shared
memory into the socket, and lands in a block of the worker's shared memory: the stage reads it there as a read-only
view. It writes its result into a new array in the worker's shared memory and sends it on to the sink, which runs on
this program's node. Two local nodes show it on one machine; on several machines, give each node a cluster secret
and an address the others reach (docs/cluster.md).

Start etcd, a worker node, then the program, each in a terminal of its own (no secret is needed on loopback):

    etcd --data-dir /tmp/actors-etcd --listen-client-urls http://127.0.0.1:2379 \\
         --advertise-client-urls http://127.0.0.1:2379
    actors node --cluster etcd://127.0.0.1:2379 --name worker --labels role=worker
    actors run --cluster etcd://127.0.0.1:2379 examples/cluster_pipeline.py [FRAMES]

Ctrl-C stops the worker node; `rm -r /tmp/actors-etcd` after stopping etcd removes its data.
"""
import sys

import numpy as np

import actors

SHAPE = (480, 640)
FLUSH = "flush"     # asked behind frames: answered once every frame before it has reached the sink
WINDOW = 16         # frames in flight at most: each holds 1.2 MB of a node's store until the next stage has it


class Stage(actors.Actor):
    """Scales each frame by 0.5 and sends the result to `downstream`."""

    def __init__(self, downstream):
        self.downstream = downstream

    async def receive(self, frame):
        if isinstance(frame, str):                # FLUSH: behind the frames, on the same connections
            return await self.downstream.ask(frame)
        assert not frame.flags.writeable          # a view into this node's shared memory, not a copy
        out = actors.shared_array(frame.shape, np.float32)
        np.multiply(frame, 0.5, out=out)
        await self.downstream.tell(out)


class Sink(actors.Actor):
    def __init__(self):
        self.frames = 0
        self.total = 0.0

    async def receive(self, frame):
        if isinstance(frame, str):                # FLUSH: every frame before it has been added
            return self.frames, self.total
        self.frames += 1
        self.total += float(frame.sum())


async def main(system):
    frames = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    here = next(node for node in await system.nodes() if node.here)
    sink = await system.spawn(Sink, name="sink", node=here.name)
    # By label: any node that carries role=worker (node="worker" would name the node itself).
    scale = await system.spawn(Stage, sink, name="scale", labels={"role": "worker"})
    print(f"scale runs on node {scale.node!r}, sink on node {sink.node!r}")
    for i in range(frames):
        frame = actors.shared_array(SHAPE, np.float32)
        frame[:] = i                                # filled in place, in this node's shared memory
        await scale.tell(frame)
        # Backpressure counts messages, not bytes: a mailbox holds thousands of them, more frames than a store
        # holds. Messages from one sender arrive in order, across nodes too, so FLUSH reaches the stage behind the
        # frames; the stage passes it on as an ask, and the sink answers once it has added them.
        if i % WINDOW == WINDOW - 1:
            await scale.ask(FLUSH)
    count, total = await scale.ask(FLUSH)
    expected = sum(i * 0.5 for i in range(frames)) * SHAPE[0] * SHAPE[1]
    print(f"{count} frames of {SHAPE[0]}x{SHAPE[1]} float32 from node {here.name!r} through scale on node "
          f"{scale.node!r} and back to the sink; checksum {total:.0f} (expected {expected:.0f})")
    assert count == frames and abs(total - expected) < 1e-6 * expected


if __name__ == "__main__":
    actors.run(main, cluster="etcd://127.0.0.1:2379")
