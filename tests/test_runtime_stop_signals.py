"""The stop signals' handler (actors/_runtime/stop_signals.py), in a process of its own: real signals."""
import subprocess
import sys
import textwrap

from _helpers.processes import CLI_TIMEOUT

PROGRAM = textwrap.dedent("""
    import signal
    import trio
    from actors._runtime.stop_signals import handling_stop_signals

    seen = []

    async def main():
        came = trio.Event()

        def on_signal(signum):
            seen.append(signum)
            came.set()

        with handling_stop_signals(on_signal) as handled:
            assert handled == [signal.SIGTERM, signal.SIGHUP], handled
            signal.raise_signal(signal.SIGTERM)
            with trio.fail_after(10):
                await came.wait()                   # the callback ran, in the run
            signal.raise_signal(signal.SIGTERM)     # and this one is still on its way when the block ends
        print("handled", seen, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)

    trio.run(main)
    print("alive", flush=True)
""")


def test_a_stop_signal_left_unhandled_when_the_block_ends_does_not_kill_the_process():
    # trio's own receiver raises such a signal again under the default handler: a driver that stopped gracefully
    # died of the second SIGTERM of a group stop at the very end, with -15 rather than 143
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] in ("handled [15] True", "handled [15, 15] True"), lines
    assert lines[-1] == "alive", lines


def test_a_stop_signal_ignored_at_start_stays_ignored():
    program = "import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN)\n" + PROGRAM.replace(
        "[signal.SIGTERM, signal.SIGHUP]", "[signal.SIGTERM]")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=CLI_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "alive", done.stdout
