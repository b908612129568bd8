"""Put a message and a numpy array into shared memory and read them back in another process, with no copy."""
import multiprocessing as mp

import numpy as np

import actors


def reader(store_name, ref):
    store = actors.ObjectStore.attach(store_name)
    msg = store.get(ref)
    frame = store.get(msg["frame"])
    print(f"reader: got {msg['name']!r}, frame {frame.shape} {frame.dtype}, sum {frame.sum():.0f}, "
          f"read-only view into shared memory: {not frame.flags.writeable}")


if __name__ == "__main__":
    with actors.ObjectStore(capacity="256M") as store:
        frame = store.shared_array((1080, 1920), np.uint8)     # filled in place: no copy when it is put
        frame[:] = 1
        frame_ref = store.put(frame)                            # no copy: the block the frame lives in is the message
        ref = store.put({"name": "camera-1", "frame": frame_ref})
        proc = mp.get_context("spawn").Process(target=reader, args=(store.name, ref))
        proc.start()
        proc.join(60)
        print("store after the reader finished:", store.stats())
