"""The TCP half of the cluster transport (actors/_wire/tcp.py), on its own: what the cluster tests cannot make
happen on purpose. The cluster as a whole is tested in test_cluster*.py, with real etcd and network namespaces."""
import socket

import pytest
import trio

from actors._wire.link import Unreachable
from actors._wire.tcp import handshake, start_dial


def test_a_dial_whose_socket_closed_before_its_handshake_ran_gives_up_as_unreachable():
    # A link's dial finishes in a task of its own; the link can be closed (its node declared lost) before that task
    # first runs. Its handshake then waited on a closed socket: trio raised ValueError and kept the task registered
    # under descriptor -1, and closing the endpoint later woke the ended task: an internal error in trio.
    with socket.socket() as gateway:
        gateway.bind(("127.0.0.1", 0))
        gateway.listen(1)
        address = gateway.getsockname()

        async def main():
            with trio.fail_after(20):
                sock = start_dial(address, "n1")
                sock.close()
                with pytest.raises(Unreachable, match="given up") as caught:
                    await handshake(sock, address, 1, b"secret", "n1")
                assert caught.value.gone

        trio.run(main)
