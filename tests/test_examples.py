"""Every example runs with `actors run`, as a user would, and succeeds."""
import os
import subprocess
import sys

import pytest

from _helpers.processes import leftover_segments

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
