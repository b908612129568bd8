"""Cluster faults, on simulated hosts (see _helpers/cluster.py): a persistent tally keeps an exact count while its
process, its node agent and its node's network fail under it, at home or on storage the nodes share; its journal
shows that no two instances ever wrote at once. The programs are tests/programs/cluster_app.py's `chaos` scenario.
"""
import fcntl
import os
import random
import signal
import time

import pytest

from actors._persist import Journal
from _helpers.cluster import TIMEOUT, Agent, Program
from _helpers.cluster import cluster_hosts  # noqa: F401 (fixture)

TOTAL = 20_000
STEPS = 10
TALLY = "chaos-tally"


@pytest.fixture(scope="module")
def hosts(cluster_hosts):  # noqa: F811
    """Four hosts of their own: the tally's home, two for producers, a spare sharing the tally's storage."""
    return cluster_hosts, [cluster_hosts.extra_host() for _ in range(4)]


@pytest.fixture(scope="module")
def producers(hosts):
    cluster, extra = hosts
    started = [Agent(cluster, extra[1], "cb"), Agent(cluster, extra[2], "cc")]
    try:
        yield started
        for agent in started:
            assert agent.stop() == "", f"node {agent.name} left segments in its /dev/shm"
    finally:
        for agent in started:
            agent.process.close()


class Chaos:
    """The tally's node (restarted under the same name whenever it dies) and the program that drives it all."""

    def __init__(self, cluster, host, journals, program, extra=()):
        self.cluster, self.host, self.journals, self.extra = cluster, host, str(journals), extra
        self.name = "ca"
        self.agent = self.start()
        self.program = Program(cluster, cluster.hosts[0], "chaos", program, nodes=("ca", "cb", "cc"))
        assert self.program.read("ready") is True

    def start(self):
        return Agent(self.cluster, self.host, self.name, resilience_dir=self.journals, extra=self.extra)

    def count(self):
        self.program.process.send_line("count")
        try:
            return self.program.read("count")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nthe tally's node: {self.agent.logged()[-3000:]}") from None

    def nodes(self):
        self.program.process.send_line("nodes")
        return self.program.read("nodes")

    def kill_tally(self):
        self.program.process.send_line("pid")
        os.kill(self.program.read("pid"), signal.SIGKILL)

    def kill_agent(self):
        assert self.agent.kill() == "", "the killed node left segments that cleanup did not remove"
        self.agent = self.start()

    def split(self):
        """Take the tally's node off the network for longer than its lease: it kills the tally and stops itself
        (fencing); then it comes back, as a service manager would restart it."""
        self.cluster.link(self.host, up=False)
        try:
            assert self.agent.exited() == ("", "")      # it stopped itself, and removed what it had made
            while self.name in self.nodes():
                pass                # polling the program until its node is lost (the split outlasts the lease)
        finally:
            self.cluster.link(self.host, up=True)
        assert "killing persistent actor 'chaos-tally'" in self.agent.logged()
        self.agent = self.start()

    def finish(self, sent):
        self.program.process.send_line("end")
        assert self.program.read("final", timeout=180) == (sent, sent)    # nothing lost, nothing doubled
        self.program.finish()
        assert self.agent.stop() == ""


def writers(journals):
    """(writer epochs, generations) of the tally's journal, batch by batch in the order written."""
    journal = Journal(str(journals), TALLY)
    found = journal.writers()
    journal.close()
    return [w[0] for w in found], [w[1] for w in found]


def assert_one_writer_at_a_time(journals, openings):
    epochs, generations = writers(journals)
    assert generations == sorted(generations), generations     # no batch of an older instance after a newer one
    assert epochs == sorted(epochs), epochs
    assert generations[-1] >= openings, (generations[-1], openings)


@pytest.mark.parametrize("seed", range(5))
def test_chaos_a_remote_persistent_tally_counts_every_increment_once(hosts, producers, tmp_path, seed):
    """Producers on two nodes send 20,000 increments to a persistent tally on a third, while (in an order and at
    moments the seed picks) its process is killed 5 times, its node agent twice, and its node is split off the
    network twice for longer than its lease."""
    cluster, extra = hosts
    rng = random.Random(seed)
    journals = tmp_path / "journals"
    journals.mkdir(mode=0o700)
    chaos = Chaos(cluster, extra[0], journals, f"p-chaos-{seed}")
    events = ["kill_tally"] * 5 + ["kill_agent"] * 2 + ["split"] * 2
    rng.shuffle(events)
    per_step = TOTAL // STEPS // 2
    sent = 0
    try:
        for step in range(STEPS):
            chaos.program.process.send_line(f"send {per_step}")
            sent += 2 * per_step
            if step < len(events):
                target = sent - 2 * per_step + rng.randrange(2 * per_step)     # the moment: a count reached
                while chaos.count() < target:
                    pass
                getattr(chaos, events[step])()
        chaos.finish(sent)
    finally:
        chaos.agent.process.close()
        chaos.program.process.close()
    assert sent == TOTAL
    # every start of the tally opened its journal as a writer of its own: 1 + 5 kills + 2 agents + 2 splits
    assert_one_writer_at_a_time(journals, 10)


def shared_storage(hosts, tmp_path, program):
    """The tally's node "ca" and a spare "cd", sharing a resilience directory; (cluster, directory, spare, Chaos)."""
    cluster, extra = hosts
    journals = tmp_path / "shared"
    journals.mkdir(mode=0o700)
    shared = ("--shared-resilience",)
    spare = Agent(cluster, extra[3], "cd", resilience_dir=str(journals), extra=shared)
    try:
        return cluster, journals, spare, Chaos(cluster, extra[0], journals, program, extra=shared)
    except BaseException:
        spare.process.close()
        raise


def test_a_persistent_actor_moves_to_a_node_that_shares_its_storage(hosts, producers, tmp_path):
    """With the resilience directory on storage two nodes share, the tally of a node killed, then of a node split
    off, starts again on the other node: the count stays exact, and its journal shows one writer at a time."""
    cluster, journals, spare, chaos = shared_storage(hosts, tmp_path, "p-shared")
    extra = hosts[1]
    try:
        chaos.program.process.send_line("send 2000")
        while chaos.count() < 1000:
            pass
        chaos.agent.kill()                          # not restarted: the tally runs on "cd" from now on
        chaos.program.process.send_line("send 2000")
        while chaos.count() < 6000:
            pass
        chaos.agent = chaos.start()                 # "ca" again: the tally stays where it runs
        chaos.host, chaos.name, chaos.agent, spare = extra[3], "cd", spare, chaos.agent
        chaos.split()                               # "cd" off the network: the tally moves back to "ca"
        chaos.program.process.send_line("send 2000")
        chaos.finish(12000)
        assert spare.stop() == ""
    finally:
        for process in (chaos.agent.process, chaos.program.process, spare.process):
            process.close()
    epochs, generations = writers(journals)
    assert_one_writer_at_a_time(journals, 3)
    assert len(set(epochs)) >= 3                    # three claims: on "ca", on "cd", on "ca" again


def test_a_lost_sender_s_tells_arrive_as_a_prefix_once_each(hosts, producers, tmp_path):
    """The sending node dies (kill -9 of its agent) mid-stream to a persistent receiver on another node: what the
    receiver journaled stays, once each, in order; what the sender had not yet sent, or not yet had acked, is lost
    with it (its process, which held them, is gone): the receiver has exactly the first k numbers."""
    cluster, extra = hosts
    journals = tmp_path / "journals"
    journals.mkdir(mode=0o700)
    home = Agent(cluster, extra[0], "ca", resilience_dir=str(journals))
    doomed = Agent(cluster, extra[3], "cd")
    program = Program(cluster, cluster.hosts[0], "sender_loss", "p-sender", nodes=("ca", "cd"))
    try:
        assert program.read("streaming") is True
        assert doomed.kill() == ""
        got = program.read("got")
        assert len(got) >= 500 and got == list(range(len(got)))
        program.finish()
        assert home.stop() == ""
    finally:
        for process in (home.process, doomed.process, program.process):
            process.close()


def test_a_re_placement_that_fails_is_tried_again_until_it_starts(hosts, producers, tmp_path):
    """The tally's node is killed while something else holds its journal's lock (an instance on its way out, as the
    coordinator sees it): its start on the node sharing the storage fails, and is tried again until it starts."""
    cluster, journals, spare, chaos = shared_storage(hosts, tmp_path, "p-retry")
    watched = [spare, *producers]
    try:
        chaos.program.process.send_line("send 1000")
        while chaos.count() < 500:
            pass
        assert chaos.agent.kill() == ""
        fd = os.open(journals / f"{TALLY}.lock", os.O_RDWR)
        deadline = time.monotonic() + TIMEOUT
        while True:                 # the killed instance's lock goes with its process
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the killed tally's lock was never released"
        try:
            while not any("could not re-place actor 'chaos-tally'" in log for log in
                          [chaos.program.logged(), *(agent.logged() for agent in watched)]):
                assert time.monotonic() < deadline, "no re-placement was tried"
                time.sleep(0.1)     # polling the logs, with a deadline
        finally:
            os.close(fd)            # the lock is free: the next try starts it
        chaos.program.process.send_line("send 1000")
        chaos.agent = spare         # it runs on "cd" now; "ca" stays down
        chaos.finish(4000)
    finally:
        for process in (chaos.agent.process, chaos.program.process, spare.process):
            process.close()


def test_a_link_flap_shorter_than_the_lease_loses_nothing_and_loses_no_node(hosts, producers, tmp_path):
    """The tally's node drops off the network for under a second, well within its lease: its connections survive
    (TCP resends what the flap dropped), it stays a member, and the count is exact."""
    cluster, extra = hosts
    journals = tmp_path / "journals"
    journals.mkdir(mode=0o700)
    chaos = Chaos(cluster, extra[0], journals, "p-flap")
    try:
        chaos.program.process.send_line("send 4000")
        while chaos.count() < 2000:
            pass
        cluster.link(chaos.host, up=False)
        try:
            time.sleep(0.8)         # the fault's length (not synchronisation): well under TTL - margin
        finally:
            cluster.link(chaos.host, up=True)
        assert "ca" in chaos.nodes()
        chaos.finish(8000)
        assert "lost" not in chaos.agent.logged()
    finally:
        chaos.agent.process.close()
        chaos.program.process.close()
