"""Fan-out and fan-in: mappers count words in chunks of text, one reducer merges their counts.

    actors run examples/wordcount.py [MAPPERS]
"""
import collections
import sys

import actors

TEXT = """the quick brown fox jumps over the lazy dog and the dog sleeps while the fox runs
over the hills and far away the fox is quick and the dog is lazy""" * 200


END = "end"         # asked of each mapper after its last chunk: answered once the reducer has its counts


class Mapper(actors.Actor):
    def __init__(self, reducer):
        self.reducer = reducer

    async def receive(self, lines):
        if lines == END:                                # behind this mapper's counts, on the same connection
            return await self.reducer.ask(END)
        counts = collections.Counter(word for line in lines for word in line.split())
        await self.reducer.tell(dict(counts))          # fan-in: every mapper tells the one reducer


class Reducer(actors.Actor):
    def __init__(self):
        self.totals = collections.Counter()
        self.parts = 0

    async def receive(self, counts):
        if counts == END:
            return self.parts
        self.totals.update(counts)
        self.parts += 1

    async def result(self):
        return self.parts, dict(self.totals)


async def main(system):
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    reducer = await system.spawn(Reducer, name="reducer")
    mappers = [await system.spawn(Mapper, reducer, name=f"mapper-{i}") for i in range(n)]
    lines = TEXT.splitlines()
    chunks = [lines[i::n * 10] for i in range(n * 10)]
    for i, chunk in enumerate(chunks):                  # fan-out, round robin
        await mappers[i % n].tell(chunk)
    for mapper in mappers:                              # every mapper's counts have reached the reducer after this
        await mapper.ask(END)
    parts, totals = await reducer.proxy.result()
    assert parts == len(chunks)
    top = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    print(f"{n} mappers, {len(chunks)} chunks, {sum(totals.values())} words; top: {top}")
    assert totals == collections.Counter(TEXT.split())


if __name__ == "__main__":
    actors.run(main)
