"""Shared by the cluster tests: a real etcd server, and hosts simulated on this machine.

Each simulated host is a Linux network namespace wired by a veth pair to a bridge in a hub namespace of its own, with
an address from 10.213.0.0/24 that exists only inside those namespaces: no traffic leaves them. Each process on a
host also gets its own mount namespace with a private tmpfs on /dev/shm, so no host reaches another through shared
memory. etcd runs in a namespace of its own on the same bridge. Every name carries a per-run tag
(`acl<pid>x<hex>`), and everything created is removed at the end, even on failure; namespaces left by a run that
was killed (its pid no longer alive) are removed by the next run.

Where the tests cannot run (no etcd binary, not root) they skip with the reason; under CI (CI set in the
environment) they fail instead, since CI is where they must run.
"""
import ast
import os
import re
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from _helpers.processes import alive, children_of, wait_gone

APP = os.path.join(os.path.dirname(os.path.dirname(__file__)), "programs", "cluster_app.py")
SECRET = "a-test-secret-of-this-cluster"
TIMEOUT = 60
SUBNET = "10.213.0"
ETCD_ADDRESS = f"{SUBNET}.2"
ETCD_PORT = 2379
_TAG = re.compile(r"^acl(\d+)x[0-9a-f]+-")


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _frozen_tree(root):
    """`root` and its descendants, each stopped (SIGSTOP) so that none starts another meanwhile: the tree is
    listed again until no new process shows up."""
    tree = [root]
    seen = {root}
    _signal(root, signal.SIGSTOP)
    while True:
        new, todo = [], [root]
        while todo:
            for child in children_of(todo.pop()):
                todo.append(child)
                if child not in seen:
                    new.append(child)
        if not new:
            return tree
        for pid in new:
            seen.add(pid)
            tree.append(pid)
            _signal(pid, signal.SIGSTOP)


def cannot_run(reason):
    """Skip with `reason`; fail under CI, where these tests must run."""
    if os.environ.get("CI"):
        pytest.fail(f"cluster tests cannot run in CI: {reason}")
    pytest.skip(reason)


def require_etcd():
    binary = shutil.which("etcd")
    if binary is None:
        cannot_run("etcd is not installed: apt-get install etcd-server (.ci/run does)")
    return binary


def require_namespaces():
    if os.geteuid() != 0:
        cannot_run("simulated hosts need root (network and mount namespaces)")
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            cannot_run(f"simulated hosts need {tool!r}: apt-get install iproute2 util-linux (.ci/run does)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _remove_stale_namespaces():
    """Namespaces of a run that died before it could clean up (its pid is gone)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _TAG.match(name)
        if match and not alive(int(match.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def _clip(text, keep=6000):
    """A process's stderr for a failure message: its start and its end, where a chained traceback puts its root
    cause and its last word."""
    if len(text) <= 2 * keep:
        return text
    return f"{text[:keep]}\n[... {len(text) - 2 * keep} characters ...]\n{text[-keep:]}"


class HostProcess:
    """A process started on a simulated host (or the machine itself): line-wise talk over its stdin and stdout, with
    deadlines."""

    def __init__(self, argv, *, host=None, log=None):
        """`log`: a file for its stderr (a server that logs for long must not fill a pipe nobody reads)."""
        self.host = host
        self.log = log
        with open(log or os.devnull, "ab") as log_file:
            self.popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=log_file if log else subprocess.PIPE)
        self.pid = self.popen.pid
        self._buffer = b""
        os.set_blocking(self.popen.stdout.fileno(), False)

    def read_line(self, timeout):
        """The next line of its stdout (without the newline), or AssertionError at the deadline or at EOF."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.popen.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line from {self.host or 'process'} within {timeout} s; "
                                         f"so far {self._buffer!r}")
                if sel.select(left):
                    data = os.read(self.popen.stdout.fileno(), 65536)
                    if not data:
                        raise AssertionError(f"{self.host or 'process'} ended (rc {self.popen.wait(5)}) before a "
                                             f"line; so far {self._buffer!r}; stderr: {self.stderr()}")
                    self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def send_line(self, text):
        self.popen.stdin.write(text.encode() + b"\n")
        self.popen.stdin.flush()

    def stderr(self):
        if self.log:
            with open(self.log, "rb") as f:
                return _clip(f.read().decode(errors="replace"))
        if self.popen.poll() is None:
            return "(still running)"
        return _clip(self.popen.stderr.read().decode(errors="replace"))

    def kill(self):
        """SIGKILL it and every process it started: a wrapper's program (`sh -c '...; echo ...'` forks it), a
        node's actors. Killing the wrapper alone would leave its program running, an orphan, after a failed test."""
        if self.popen.poll() is not None:
            return                  # ended (and reaped: its pid may be another process's by now)
        tree = _frozen_tree(self.pid)
        for pid in tree:
            _signal(pid, signal.SIGKILL)
        self.popen.wait(10)
        left = wait_gone(tree, 10)
        assert not left, f"processes {left} still run 10 s after SIGKILL"

    def finish(self, timeout):
        """Close its stdin (the sign to stop) and wait for it; its exit code."""
        try:
            self.popen.stdin.close()
        except BrokenPipeError:
            pass
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.host or 'process'} did not stop within {timeout} s")

    def close(self):
        self.kill()
        for f in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


def read_first(processes, timeout):
    """The first of `processes` to print a line, and that line; AssertionError when none does within `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        for process in processes:
            if b"\n" in process._buffer:
                return process, process.read_line(0)
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no line from any of {[p.host for p in processes]} within {timeout} s")
        with selectors.DefaultSelector() as sel:
            for process in processes:
                sel.register(process.popen.stdout, selectors.EVENT_READ, process)
            for key, _ in sel.select(left):
                data = os.read(key.fileobj.fileno(), 65536)
                if not data:
                    raise AssertionError(f"{key.data.host} ended (rc {key.data.popen.wait(5)}); "
                                         f"stderr: {key.data.stderr()}")
                key.data._buffer += data


def _etcd_argv(binary, name, data_dir, client_host, client_port, peer_port):
    client = f"http://{client_host}:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    return [binary, "--name", name, "--data-dir", data_dir,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}", "--log-level", "error"]


_HEALTH_PROBE = """
import http.client, json, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        c = http.client.HTTPConnection(host, port, timeout=1)
        c.request("GET", "/health")
        if json.loads(c.getresponse().read()).get("health") == "true":
            sys.exit(0)
    except (OSError, ValueError):
        pass
    time.sleep(0.05)
sys.exit(1)
"""


def _wait_healthy(prefix, host, port, etcd, timeout):
    """Poll etcd's /health (from inside its namespace when `prefix` enters one) until it answers or `timeout`."""
    probe = subprocess.run([*prefix, sys.executable, "-c", _HEALTH_PROBE, host, str(port), str(timeout)],
                           capture_output=True, timeout=timeout + 10)
    if probe.returncode != 0:
        raise RuntimeError(f"etcd at {host}:{port} was not healthy within {timeout} s "
                           f"(exit code {etcd.popen.poll()}); stderr: {etcd.stderr()}")


class EtcdServer:
    """A one-member etcd on 127.0.0.1 with random free ports and its data in a temporary directory."""

    def __init__(self, binary, *, timeout=20.0):
        self.dir = tempfile.mkdtemp(prefix="actors-etcd-")
        self.process = None
        try:
            self.port = free_port()
            self.process = HostProcess(_etcd_argv(binary, "test", os.path.join(self.dir, "data"), "127.0.0.1",
                                                  self.port, free_port()), log=os.path.join(self.dir, "log"))
            _wait_healthy([], "127.0.0.1", self.port, self.process, timeout)
        except BaseException:
            self.close()
            raise
        self.url = f"etcd://127.0.0.1:{self.port}"

    def close(self):
        if self.process is not None:
            self.process.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class SimulatedHosts:
    """Hosts on this machine (see the module docstring): `hosts[i]` is the i-th host's name, `run(host, argv)` starts
    a process there, `etcd_url` is the cluster's etcd, reachable from every host."""

    def __init__(self, count, *, etcd_binary=None, timeout=20.0):
        self.tag = f"acl{os.getpid()}x{secrets.token_hex(3)}"
        self.dir = tempfile.mkdtemp(prefix=f"actors-{self.tag}-")
        self.namespaces = []
        self.processes = []
        self.hosts = []
        self.addresses = {}
        self.etcd = None
        self.etcd_url = None
        try:
            _remove_stale_namespaces()
            self.hub = self._namespace("hub")
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            if etcd_binary is not None:
                etcd_ns = self._attach("etcd", ETCD_ADDRESS)
                self.etcd = self.run(etcd_ns, _etcd_argv(etcd_binary, "cluster", os.path.join(self.dir, "etcd"),
                                                         ETCD_ADDRESS, ETCD_PORT, 2380),
                                     log=os.path.join(self.dir, "etcd.log"))
                _wait_healthy(self._enter(etcd_ns), ETCD_ADDRESS, ETCD_PORT, self.etcd, timeout)
                self.etcd_url = f"etcd://{ETCD_ADDRESS}:{ETCD_PORT}"
            for i in range(1, count + 1):
                self.hosts.append(self._attach(f"h{i}", f"{SUBNET}.{10 + i}"))
        except BaseException:
            self.close()
            raise

    def _namespace(self, role):
        name = f"{self.tag}-{role}"
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def _attach(self, role, address):
        """A namespace on the bridge with `address`; its end of the veth pair is eth0."""
        name = self._namespace(role)
        port = f"v{role}"
        _ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip("-n", self.hub, "link", "set", port, "master", "br0", "up")
        _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        self.addresses[name] = address
        return name

    def extra_host(self):
        """One more host on the bridge, for a test of its own (not in `hosts`, which tests iterate over)."""
        self.extras = getattr(self, "extras", 0) + 1
        return self._attach(f"x{self.extras}", f"{SUBNET}.{100 + self.extras}")

    def link(self, host, up):
        """Take `host`'s network link down (a split: it reaches nothing, nothing reaches it) or up again."""
        _ip("-n", host, "link", "set", "eth0", "up" if up else "down")

    @staticmethod
    def _enter(host):
        """The argv prefix that runs a command on `host`, in its own mount namespace with a private /dev/shm."""
        return ["ip", "netns", "exec", host, "unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount -t tmpfs -o mode=1777,size=1g tmpfs /dev/shm && exec "$@"', "sh"]

    def run(self, host, argv, *, log=None):
        """Start `argv` on `host`; the process is killed at `close` if still running."""
        process = HostProcess([*self._enter(host), *argv], host=host, log=log)
        self.processes.append(process)
        return process

    def python(self, host, code, *args):
        """Run Python `code` on `host` with this interpreter (`sys.argv[1:]` = `args`)."""
        return self.run(host, [sys.executable, "-c", code, *map(str, args)])

    def close(self):
        """Kill every process, then remove the namespaces (their veths and the bridge go with them) and the
        directory. Safe to call twice and after a partial setup."""
        for process in self.processes:
            process.close()
        self.processes.clear()
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        self.namespaces.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def leftovers(tag, pids):
    """What a run tagged `tag` left on the machine: its namespaces, its temporary directories, segments in this
    machine's /dev/shm named with the tag, and which of `pids` (its processes) still run."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    found = [f"netns {line.split()[0]}" for line in listing.splitlines() if line.startswith(tag)]
    found += [f"dir {d}" for d in os.listdir(tempfile.gettempdir()) if tag in d]
    found += [f"/dev/shm/{n}" for n in os.listdir("/dev/shm") if tag in n]
    found += [f"process {pid}" for pid in pids if alive(pid)]
    return found


def _with_shm_report(argv):
    """Run `argv`, then print what it left in the host's private /dev/shm (the mount namespace ends with it); then
    run `actors cleanup`, as the next system started on that host would, and print what is left after it."""
    command = " ".join(f"'{a}'" for a in argv)
    listing = '$(ls -A /dev/shm | tr "\\n" " ")'
    return ["sh", "-c", f'{command}; echo "shm-left:{listing}"; {sys.executable} -m actors cleanup >/dev/null 2>&1; '
                        f'echo "shm-after-cleanup:{listing}"']


class Agent:
    """`actors node` on a simulated host."""

    def __init__(self, hosts, host, name, labels="", secret=SECRET, resilience_dir=None, extra=()):
        self.name = name
        self.host = host
        self.log = os.path.join(hosts.dir, f"agent-{name}.log")
        # a node restarted under its name logs to the same file: this one's part starts here
        self.log_start = os.path.getsize(self.log) if os.path.exists(self.log) else 0
        secret_file = os.path.join(hosts.dir, f"secret-{name}")
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret)
        self.process = hosts.run(host, _with_shm_report([
            sys.executable, "-m", "actors", "node", "--cluster", hosts.etcd_url, "--name", name,
            "--labels", labels, "--secret-file", secret_file, "--store-capacity", "512M",
            *(["--resilience-dir", resilience_dir] if resilience_dir else []), *extra]), log=self.log)
        line = self.process.read_line(TIMEOUT)
        assert f"node {name!r} (pid " in line, (line, self.logged())
        self.pid = int(line.split("(pid ")[1].split(")")[0])
        self.address = line.rsplit(" ", 1)[1]

    def logged(self):
        """What this agent logged (not the agents of the same name before it)."""
        with open(self.log, "rb") as f:
            f.seek(self.log_start)
            return f.read().decode(errors="replace")

    def stop(self):
        """SIGTERM, as a service manager stops it; what it left in its /dev/shm."""
        os.kill(self.pid, signal.SIGTERM)
        line = self.process.read_line(TIMEOUT)
        assert self.process.finish(TIMEOUT) == 0
        assert line.startswith("shm-left:"), line
        return line[len("shm-left:"):].strip()

    def exited(self, timeout=TIMEOUT):
        """Wait for it to end by itself (or by a kill -9): (what it left in its /dev/shm, what is left once
        `actors cleanup` ran there, as the next system on the host would)."""
        left = self.process.read_line(timeout)
        assert left.startswith("shm-left:"), left
        after = self.process.read_line(timeout)
        assert after.startswith("shm-after-cleanup:"), after
        self.process.close()
        return left[len("shm-left:"):].strip(), after[len("shm-after-cleanup:"):].strip()

    def kill(self):
        """kill -9 the node agent; what is left in its /dev/shm after cleanup (see `exited`)."""
        os.kill(self.pid, signal.SIGKILL)
        return self.exited()[1]


class Program:
    """cluster_app.py running a scenario on a host, as a node of its own."""

    def __init__(self, hosts, host, scenario, name, secret=SECRET, nodes=("h2", "h3")):
        argv = [sys.executable, APP, scenario, hosts.etcd_url, name, *nodes]
        self.log = os.path.join(hosts.dir, f"program-{name}.log")
        self.process = hosts.run(host, ["env", f"ACTORS_CLUSTER_SECRET={secret}", *_with_shm_report(argv)],
                                 log=self.log)
        self.seen = {}

    def read(self, key, timeout=TIMEOUT):
        """The value of the next `key=` line (the lines before it are kept in `seen`)."""
        while key not in self.seen:
            try:
                line = self.process.read_line(timeout)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; its log: {self.logged()[-3000:]}") from None
            if line.startswith("shm-left:"):
                raise AssertionError(f"the program ended before printing {key}: {self.seen}; "
                                     f"stderr: {self.process.stderr()}")
            name, _, value = line.partition("=")
            if name and value:
                self.seen[name] = ast.literal_eval(value)
        return self.seen.pop(key)

    def logged(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def finish(self):
        """Its last lines: it printed done, and left nothing in /dev/shm."""
        done = self.read("done")
        line = self.process.read_line(TIMEOUT)
        assert line.startswith("shm-left:") and line[len("shm-left:"):].strip() == "", line
        assert self.process.finish(TIMEOUT) == 0
        return done




@pytest.fixture(scope="session")
def etcd_server():
    """A real etcd on 127.0.0.1 for the whole session: its `url` is etcd://127.0.0.1:PORT."""
    server = EtcdServer(require_etcd())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def cluster_hosts():
    """Three simulated hosts and an etcd that all of them reach, for the whole session."""
    binary = require_etcd()
    require_namespaces()
    hosts = SimulatedHosts(3, etcd_binary=binary)
    try:
        yield hosts
    finally:
        hosts.close()
