"""A cluster across simulated hosts: node agents (`actors node`) on two hosts, programs on a third joining as nodes,
a real etcd, TCP between network namespaces, a private /dev/shm per host process. The programs are
tests/programs/cluster_app.py; each prints `key=value` lines that these tests check.
"""
import os
import sys
import time

import pytest

from actors._runtime.cluster.node import LEASE_TTL
from _helpers.cluster import TIMEOUT, Agent, EtcdServer, HostProcess, Program, free_port, require_etcd
from _helpers.cluster import cluster_hosts  # noqa: F401 (fixture)
from _helpers.processes import cpu_seconds, run_cli

AGENTS = {"h2": "role=cpu", "h3": "role=gpu"}


@pytest.fixture(scope="module")
def agents(cluster_hosts):  # noqa: F811
    started = {}
    try:
        for host, (name, labels) in zip(cluster_hosts.hosts[1:], AGENTS.items()):
            started[name] = Agent(cluster_hosts, host, name, labels)
        yield started
        for agent in started.values():
            assert agent.stop() == "", f"node {agent.name} left segments in its /dev/shm"
    finally:
        for agent in started.values():
            agent.process.close()


def run(hosts, scenario, name, **kw):
    return Program(hosts, hosts.hosts[0], scenario, name, **kw)


def test_spawn_on_a_chosen_node_by_labels_and_by_load(cluster_hosts, agents):
    p = run(cluster_hosts, "placement", "p-place")
    assert p.read("nodes") == [("h2", {"role": "cpu"}, False), ("h3", {"role": "gpu"}, False),
                               ("p-place", {}, True)]
    assert p.read("named_node") == "h2"
    node, pid = p.read("named_node_answers")
    assert node == "h2" and pid != os.getpid()
    assert p.read("label_node") == "h3"
    assert "no node of the cluster carries the labels {'role': 'none-has-it'}" in p.read("no_label")
    assert "no such node is in the cluster" in p.read("no_node")
    # the node named has no resilience directory: the error names that node, and how it gets one
    assert p.read("no_dir") == ("cannot spawn persistent actor 'tally-without-dir' on node 'h2': that node has no "
                                "resilience directory; start it with `actors node ... --resilience-dir DIR`, or "
                                "place the actor on a node that has one (spawn(..., node=NAME))")
    assert p.read("no_module") == ("cannot spawn 'from-elsewhere' on node 'h2': its class, or an argument, comes from "
                                   "module 'only_here', which node 'h2' cannot import; install that module there, or "
                                   "have the program send its code: `cloudpickle.register_pickle_by_value(only_here)` "
                                   "after importing it")
    assert p.read("spread") == ["h2", "h3", "p-place"]     # the least loaded first: every node gets some
    p.finish()


def test_tell_ask_proxy_watch_and_classes_across_hosts(cluster_hosts, agents):
    p = run(cluster_hosts, "talk", "p-talk")
    assert p.read("ask") == ("hello", "h2")
    assert p.read("proxy") == 2501          # every tell arrived, once
    assert p.read("point") == ("point", 5, "h2")     # a class registered at startup, fetched on first use
    assert p.read("late") == ("late", "x", "h2")     # one registered while running
    assert "holds an ObjectRef, which names a block in this machine's shared memory" in p.read("objectref")
    after_stop = p.read("after_stop")        # refused at the dial, or its connection found closed
    assert "on node 'h2'" in after_stop and ("it has stopped" in after_stop or "stopped before it replied"
                                             in after_stop), after_stop
    watched = p.read("watched")
    assert len(watched) == 1 and watched[0][0] == "terminated" and watched[0][2] is False
    p.finish()


def test_refs_inside_messages_across_three_hosts(cluster_hosts, agents):
    p = run(cluster_hosts, "refs", "p-refs")
    assert p.read("trail") == [["start", "h2", "h3"]]
    assert p.read("nested_ask") == ("h2", ("via", "h3"))
    p.finish()


def test_numpy_arrays_across_hosts(cluster_hosts, agents):
    p = run(cluster_hosts, "arrays", "p-arrays")
    small = p.read("small")
    assert small["shape"] == (10,) and small["sum"] == 45.0
    assert small["writeable"] is False          # a read-only view...
    assert small["in_shm"] == "Pin"             # ...into the receiving host's shared memory
    assert p.read("small_asks_meanwhile") == 20
    big = p.read("big")
    assert big["shape"] == (100 * 1024 * 1024 // 8,) and big["sum"] == 100 * 1024 * 1024 // 8
    assert big["writeable"] is False
    assert p.read("shared_array")["sum"] == 2000.0
    p.finish()


def test_a_slow_remote_receiver_holds_its_sender_back_and_loses_nothing(cluster_hosts, agents):
    p = run(cluster_hosts, "backpressure", "p-slow")
    accepted = p.read("accepted")
    # the sender's mailbox filled while the receiver read nothing: what it accepted is bounded by its outbox and the
    # buffers on the way (kernel, inbox), far below the 100,000 it tried
    assert 1000 < accepted < 20_000, accepted
    assert p.read("counted") == accepted        # and every one of them arrived, once
    p.finish()


def test_a_node_whose_store_is_full_waits_for_room_without_spinning(cluster_hosts, agents):
    """A 1 MiB array reaches a node whose store is full: the reader there sleeps between its tries for room (its
    process stays nearly idle; it once polled a socket it could not empty, at full speed), and the array is handled
    once there is room."""
    small = Agent(cluster_hosts, cluster_hosts.extra_host(), "h-small", extra=("--store-capacity", "32M"))
    p = run(cluster_hosts, "starve", "p-starve", nodes=("h-small",))
    try:
        assert p.read("filled") >= 8
        pid = p.read("starving")
        before = cpu_seconds(pid)
        time.sleep(2.0)                 # a window to measure the CPU time in, not synchronisation
        used = cpu_seconds(pid) - before
        assert used < 0.5, f"the reader waiting for room used {used:.2f} s of CPU in 2 s"
        p.process.send_line("go")
        assert p.read("got") == 1
        p.finish()
        assert small.stop() == ""
    finally:
        small.process.close()
        p.process.close()


def test_names_are_unique_across_the_cluster_under_a_race(cluster_hosts, agents):
    racers = [Program(cluster_hosts, host, "race", f"racer{i}") for i, host in enumerate(cluster_hosts.hosts)]
    for racer in racers:
        racer.read("node")
    for racer in racers:
        racer.process.send_line("go")
    outcomes = [racer.read("race") for racer in racers]
    winners = [r for r, outcome in zip(racers, outcomes) if outcome == "won"]
    assert len(winners) == 1, outcomes
    holder = winners[0].read("holder")
    for outcome in outcomes:
        if outcome != "won":
            assert f"an actor of that name is running on node {holder!r}" in outcome
    winners[0].process.send_line("end")
    for racer in racers:
        racer.finish()


def test_lookup_from_every_node(cluster_hosts, agents):
    p = run(cluster_hosts, "lookup", "p-lookup")
    assert p.read("from_driver") == ("findme", "h3", True)
    assert p.read("from_actor") == ("findme", "h3")
    assert "no running actor is named 'nobody-has-this-name' on any node" in p.read("missing")
    assert p.read("taken_again") == ("h2", "h2")
    p.finish()


def test_a_node_joining_and_leaving(cluster_hosts, agents):
    p = run(cluster_hosts, "join_leave", "p-join")
    assert "late" not in p.read("before")
    late = Agent(cluster_hosts, cluster_hosts.hosts[0], "late")
    try:
        p.process.send_line("go")
        assert "late" in p.read("joined")
        assert p.read("on_late") == ("hi", "late")
        assert late.stop() == ""
        p.process.send_line("go")
        assert "late" not in p.read("left")
        assert "on node 'late'" in p.read("gone")
    finally:
        late.process.close()
    p.finish()


def test_a_node_split_off_the_network_is_lost_within_its_lease(cluster_hosts, agents):
    p = run(cluster_hosts, "node_loss", "p-loss")
    host = cluster_hosts.extra_host()
    doomed = Agent(cluster_hosts, host, "doomed")
    try:
        p.process.send_line("go")               # the program may place actors on it now
        assert p.read("ready") is True
        cluster_hosts.link(host, up=False)      # asks are waiting on it; its connections stay open, silent
        p.process.send_line("split")
        terminated, after = p.read("terminated")
        assert terminated == [("terminated", terminated[0][1], False)]
        assert after <= LEASE_TTL + 1, after    # its lease ran out (at most TTL), etcd said so (within 0.5 s)
        asks = p.read("asks")
        assert "on node 'doomed'" in asks["driver"], asks
        assert asks["actor"][0] == "failed" and "on node 'doomed'" in asks["actor"][1], asks
        assert "doomed" not in p.read("nodes_after")
        assert "its node 'doomed' has left the cluster" in p.read("tell_after")
        p.finish()
        # on its side of the split, the node could not renew its lease: it stopped itself, and its actors
        assert doomed.process.read_line(TIMEOUT) == "shm-left:"    # it stopped, and left nothing behind
        assert "lost its place in the cluster, and stops" in doomed.logged()
    finally:
        cluster_hosts.link(host, up=True)
        doomed.process.close()


def test_an_actor_of_a_killed_node_runs_again_on_another_within_ttl_plus_2_s(cluster_hosts, agents):
    p = run(cluster_hosts, "replacement", "p-replace")
    mortal = Agent(cluster_hosts, cluster_hosts.extra_host(), "mortal")
    try:
        p.process.send_line("go")
        assert p.read("before") == "mortal"
        assert mortal.kill() == ""                 # kill -9 of its node agent: its actors die with it
        p.process.send_line("split")
        node, after = p.read("after")
        assert node in ("h2", "h3", "p-replace"), node
        assert after <= LEASE_TTL + 2, after       # lost (at most TTL), re-placed, answering
        assert p.read("same") == (True, node)     # its name, its id: the refs held before still reach it
        assert p.read("fragile") == "gone"         # restart="never": not re-placed
        p.finish()
    finally:
        mortal.process.close()


def test_tells_to_a_persistent_actor_on_another_node_survive_kill_9_exactly_once(cluster_hosts, agents, tmp_path):
    p = run(cluster_hosts, "persistent_remote", "p-persist")
    journals = tmp_path / "journals"
    journals.mkdir(mode=0o700)
    keeper = Agent(cluster_hosts, cluster_hosts.extra_host(), "keeper", resilience_dir=str(journals))
    try:
        p.process.send_line("go")
        count, total, kills = p.read("tally")
        assert kills == 3 and count == total       # every tell counted once: none lost, none doubled
        p.finish()
        assert keeper.stop() == ""
    finally:
        keeper.process.close()


_RAW_DIAL = """
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=10)
challenge = s.recv(1024)
s.sendall(b"x" * 72)            # a nonce, a target and a proof that proves nothing
print("closed" if s.recv(1024) == b"" else "answered", flush=True)
"""


def test_a_connection_without_the_secret_is_refused_and_logged(cluster_hosts, agents):
    h2 = agents["h2"]
    raw = cluster_hosts.python(cluster_hosts.hosts[0], _RAW_DIAL, h2.address)
    assert raw.read_line(TIMEOUT) == "closed"
    p = run(cluster_hosts, "wrong_secret", "p-wrong", secret="not-the-secret")
    assert "this node's cluster secret is not the cluster's" in p.read("refused")
    p.finish()
    logged = h2.logged()
    assert logged.count("did not prove it knows the cluster secret") >= 2, logged


def test_a_node_without_a_secret_listens_on_loopback_only(cluster_hosts):
    process = cluster_hosts.run(cluster_hosts.hosts[0], [
        "env", "-u", "ACTORS_CLUSTER_SECRET", sys.executable, "-m", "actors", "node",
        "--cluster", cluster_hosts.etcd_url, "--name", "no-secret"])
    assert process.finish(TIMEOUT) == 1
    assert "a node without a cluster secret listens on loopback only" in process.stderr()


def test_a_node_that_loses_etcd_stops_within_its_lease_and_says_why(tmp_path):
    """Fencing at its simplest: a node that cannot renew its lease acts on nothing bound to it any more."""
    etcd = EtcdServer(require_etcd())
    try:
        node = HostProcess([sys.executable, "-m", "actors", "node", "--cluster", etcd.url, "--name", "lonely",
                            "--listen", "127.0.0.1:0"], log=str(tmp_path / "node.log"))
        try:
            assert "joined the cluster" in node.read_line(TIMEOUT)
            etcd.process.kill()
            assert node.popen.wait(LEASE_TTL + 10) == 1
            with open(tmp_path / "node.log") as f:
                logged = f.read()
            assert "node 'lonely' lost its place in the cluster, and stops: lease" in logged, logged
        finally:
            node.close()
    finally:
        etcd.close()


def test_a_node_started_before_etcd_says_so_in_one_line():
    port = free_port()          # nothing listens there
    done = run_cli("node", "--cluster", f"etcd://127.0.0.1:{port}", "--name", "early")
    assert done.returncode == 1, done.stderr
    assert done.stderr == (f"actors: cannot reach etcd at 127.0.0.1:{port}: Connection refused; start etcd or check "
                           f"--cluster\n"), done.stderr
