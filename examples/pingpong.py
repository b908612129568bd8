"""Two actors bounce a ball; the driver reports the round-trip rate.

    actors run examples/pingpong.py [ROUNDS]
"""
import sys
import time

import actors


class Player(actors.Actor):
    def __init__(self, name):
        self.name = name
        self.hits = 0

    async def receive(self, ball):
        self.hits += 1
        return ball + 1

    async def rally(self, other, rounds):
        """Hit the ball to `other` `rounds` times, each an ask: a full round trip between two processes."""
        ball = 0
        for _ in range(rounds):
            ball = await other.ask(ball)
        return ball


async def main(system):
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    ping = await system.spawn(Player, "ping", name="ping")
    pong = await system.spawn(Player, "pong", name="pong")
    start = time.perf_counter()
    ball = await ping.proxy.rally(pong, rounds)
    elapsed = time.perf_counter() - start
    print(f"{rounds} round trips between two actor processes in {elapsed:.2f} s "
          f"({elapsed / rounds * 1e6:.0f} us each); the ball ends at {ball}")
    assert ball == rounds


if __name__ == "__main__":
    actors.run(main)
