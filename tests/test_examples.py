"""Every example runs with `actors run`, as a user would, and succeeds."""
import os
import signal
import subprocess
import sys

import pytest

from _helpers.cluster import etcd_server  # noqa: F401 (fixture)
from _helpers.processes import launched, leftover_segments  # noqa: F401 (fixture)

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.mark.parametrize("example, args, expect", [
    ("pingpong.py", ["2000"], "2000 round trips between two actor processes"),
    ("pipeline.py", ["50"], "50 frames of 480x640 float32 through scale -> clip -> sink"),
    ("wordcount.py", ["3"], "3 mappers, 30 chunks"),
])
def test_example_runs(example, args, expect):
    before = leftover_segments()
    out = subprocess.run([sys.executable, "-m", "actors", "run", os.path.join(EXAMPLES, example), *args],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert expect in out.stdout
    assert leftover_segments() == before       # the example's own segments (its driver has exited) are gone


def test_store_demo_runs():
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, "store_demo.py")], capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "read-only view into shared memory: True" in out.stdout


def test_cluster_pipeline_runs_across_two_nodes(etcd_server, launched, tmp_path):  # noqa: F811
    """As its docstring says: a worker node (`actors node`), then the program as a second node of the same etcd."""
    before = leftover_segments()
    worker = launched("node", "--cluster", etcd_server.url, "--name", "worker", "--labels", "role=worker",
                      "--store-capacity", "128M", cwd=tmp_path)
    worker.wait_for_line("node 'worker' (pid ", timeout=60)
    out = subprocess.run([sys.executable, "-m", "actors", "run", "--cluster", etcd_server.url, "--name", "program",
                          "--store-capacity", "128M", os.path.join(EXAMPLES, "cluster_pipeline.py"), "40"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "scale runs on node 'worker', sink on node 'program'" in out.stdout
    assert ("40 frames of 480x640 float32 from node 'program' through scale on node 'worker' and back to the sink; "
            "checksum 119808000 (expected 119808000)") in out.stdout, out.stdout
    worker.proc.send_signal(signal.SIGTERM)         # as a service manager stops it
    assert worker.wait(60) == 0, worker.stderr()
    assert "the node stopped its actors and left the cluster" in worker.stderr()
    assert leftover_segments() == before            # neither node left a segment behind
