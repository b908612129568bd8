"""The docs are tests: every complete program in docs/*.md and README.md runs as a user would run it, and its output
must match the output the page shows; the `>>>` examples of a page run as a doctest. A page that drifts from the
code fails here.

How a page marks its blocks:

- A ```python block that does not start with `>>>` is a complete program. It is written, in the page's own
  directory outside the source tree, to the file that the next command names (`$ actors run watch.py`), or to the
  file that a `<!-- test: file=NAME.py -->` comment just before it names, else to `example.py`.
- A plain ``` block right after a program (nothing but blank lines between them) is its expected output. If its
  first line starts with `$ `, it is a shell session: each `$ ` line is a command run in the page's directory, and
  the lines after it, up to the next `$ `, its output. Otherwise the program runs as `python FILE`, and the block is
  its output. A program without such a block must print nothing.
- A plain block elsewhere on the page whose first line starts with `$ ` is a session too, run in the same directory
  after everything above it on the page, so that a page can go on working with the files made earlier.
- `<!-- test: ... -->` just before a block sets options, separated by `;`:
  `file=NAME.py`; `skip=why` (not run; say why); `numbers` (compare the shape of the output only: every number
  matches any number, for tables of timings); `unordered` (each process's lines in any order, for log lines that
  race with the lines around them); `exit=N` (every command of the block exits with N); `before=SHELL`
  (a hidden command run first, to make the files a session needs; it may not contain `;`).
- For clusters: `etcd` marks the block that starts etcd on 127.0.0.1:2379. It is not run: a real etcd starts in its
  place, on free ports, for the rest of the page; `127.0.0.1:2379` in the page's later programs and commands is that
  etcd, and its address reads as `127.0.0.1:2379` in what they print (without the etcd binary the page skips, and
  fails under CI, as the cluster tests do). `background` runs the block's one command until the end of the page, as
  in a terminal of its own (a node agent): the page goes on once it has printed the lines the block shows before
  its first actor line, `^C` or `...`; at the end of the page it gets Ctrl-C (`SIGINT` to its process group) where
  the block shows `^C`, else `SIGTERM`, and all it printed must match the block.

How output is compared, so that pids, addresses, timings and ids do not matter:

- A line `...` matches any number of lines, and `...` inside a line matches any text; `<n>` matches a number.
- Pids (`pid 4242`), hex addresses (`0x7f...`) and segment names match any pid, address or segment name.
- Lines an actor prints carry its name (`[counter] ...`), and reach the terminal through its own pipe, so they can
  land a little earlier or later among the driver's lines. Each process's lines are therefore compared in order,
  but not their interleaving with other processes' lines.
- A command's exit status must be 0 (or the block's `exit=N`), unless the next command of the session is
  `echo $?`, which shows it.

Every command runs with a timeout, with a small store (ACTORS_STORE_CAPACITY=64M unless the page's command sets
one), and with unbuffered output, as on a terminal. A program that takes long has a size knob its page shows.
"""
from __future__ import annotations

import difflib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import pytest

from _helpers.cluster import EtcdServer, require_etcd
from _helpers.processes import leftover_segments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted([os.path.join("docs", name) for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md")]
               + ["README.md"])
COMMAND_TIMEOUT = 120

# Known drifts not fixed in the page yet, by (test, page): the test is expected to fail until they are. Strict, so
# that the suite fails as soon as the page is fixed and its entry here is left behind.
KNOWN_DRIFTS: dict[tuple[str, str], str] = {
}


# Of those, the pages whose commands must not run meanwhile.
NOT_RUN: set[tuple[str, str]] = set()


def pages(test: str, candidates: list[str]) -> list:
    return [pytest.param(page, marks=pytest.mark.xfail(reason=KNOWN_DRIFTS[test, page], strict=True,
                                                       run=(test, page) not in NOT_RUN))
            if (test, page) in KNOWN_DRIFTS else page for page in candidates]


@dataclass
class Step:
    line: int                   # where the block starts in the page, for failure messages
    kind: str                   # "program" (write a file) or "session" (run commands and compare)
    text: str = ""
    file: str = ""
    options: dict = field(default_factory=dict)
    commands: list = field(default_factory=list)    # [(command, expected output lines)]


def parse_options(comment: str) -> dict:
    options = {}
    for part in comment.split(";"):
        part = part.strip()
        if part:
            key, _, value = part.partition("=")
            options[key.strip()] = value.strip()
    return options


def blocks(text: str):
    """(line number, language, body, the options of a `<!-- test: -->` comment just before, whether only blank
    lines separate it from the block before) for each fenced block of a page."""
    lines = text.split("\n")
    i = 0
    last_end = None
    pending = None
    while i < len(lines):
        line = lines[i]
        marker = re.fullmatch(r"<!-- test: (.*) -->", line.strip())
        if marker:
            pending = parse_options(marker.group(1))
        elif line.startswith("```"):
            lang = line[3:].strip()
            start = i
            i += 1
            body = []
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            adjacent = last_end is not None and all(not s.strip() or re.fullmatch(r"<!-- test: .* -->", s.strip())
                                                    for s in lines[last_end + 1:start])
            yield start + 1, lang, "\n".join(body), pending or {}, adjacent
            pending = None
            last_end = i
        elif line.strip():
            pending = None if not line.startswith("<!--") else pending
        i += 1


def session(body: str) -> list:
    commands = []
    for line in body.split("\n"):
        if line.startswith("$ "):
            commands.append((line[2:], []))
        else:
            commands[-1][1].append(line)
    return commands


def steps(page: str) -> list[Step]:
    """The page's programs and sessions, in the page's order."""
    with open(os.path.join(ROOT, page)) as f:
        text = f.read()
    result: list[Step] = []
    waiting = None              # a program whose output block may come next

    def run_silent(program):    # a program the page shows no output for must print nothing
        program.file = program.file or "example.py"
        result.append(Step(program.line, "session", options=program.options,
                           commands=[(f"python {program.file}", [])]))

    for line, lang, body, options, adjacent in blocks(text):
        if lang == "python" and body.lstrip().startswith(">>>"):
            lang = "doctest"
        output_of = waiting if (waiting is not None and adjacent and lang == "") else None
        if waiting is not None and output_of is None:
            run_silent(waiting)
        waiting = None
        if lang == "python":
            waiting = Step(line, "program", body, options.get("file", ""), options)
            result.append(waiting)
        elif output_of is not None:
            merged = {**output_of.options, **options}
            if body.startswith("$ "):
                step = Step(line, "session", options=merged, commands=session(body))
                named = re.search(r"(\S+\.py)\b", step.commands[0][0])
                output_of.file = output_of.file or (named.group(1) if named else "example.py")
            else:
                output_of.file = output_of.file or "example.py"
                step = Step(line, "session", options=merged, commands=[(f"python {output_of.file}", body.split("\n"))])
            result.append(step)
        elif lang == "" and body.startswith("$ "):
            result.append(Step(line, "session", options=options, commands=session(body)))
    if waiting is not None:
        run_silent(waiting)
    return result


# --- comparing output --------------------------------------------------------------------------------------------

NORMALIZE = [
    (re.compile(r"\bpid \d+"), "pid <pid>"),
    (re.compile(r"\b0x[0-9a-f]{6,}\b"), "0x<address>"),
    (re.compile(r"\bactors\.\d+\.\d+\.\w+\.[\w-]+"), "<segment>"),
]
NUMBER = re.compile(r"(?<![\w<])\d[\d,]*(?:\.\d+)?")


def normalize(line: str, numbers: bool) -> str:
    line = line.rstrip()
    for pattern, replacement in NORMALIZE:
        line = pattern.sub(replacement, line)
    if numbers:
        line = re.sub(r"\s+", " ", NUMBER.sub("<n>", line))
    return line


def line_pattern(expected: str) -> str:
    parts = re.split(r"(\.\.\.|<n>)", expected)
    return "".join(".*?" if p == "..." else r"(?:<n>|[\d,.]+)" if p == "<n>" else re.escape(p) for p in parts)


def by_process(lines: list[str]) -> dict[str, list[str]]:
    """Each process's lines: an actor's carry its name as a prefix, the driver's carry none."""
    streams: dict[str, list[str]] = {}
    for line in lines:
        prefixed = re.match(r"(\[[^\]\s]+\]) (.*)", line)
        name, rest = (prefixed.group(1), prefixed.group(2)) if prefixed else ("", line)
        streams.setdefault(name, []).append(rest)
    return streams


def matches(expected: list[str], actual: list[str]) -> bool:
    pattern = "".join(r"(?:[^\n]*\n)*?" if e.strip() == "..." else line_pattern(e) + r"\n" for e in expected)
    return re.fullmatch(pattern, "".join(a + "\n" for a in actual)) is not None


def compare(expected: list[str], actual: list[str], numbers: bool, unordered: bool = False) -> str | None:
    """None if `actual` is what `expected` shows, else a diff to read."""
    while expected and not expected[-1].strip():
        expected = expected[:-1]
    exp = by_process([normalize(e, numbers) for e in expected])
    act = by_process([normalize(a, numbers) for a in actual])
    for streams in (exp, act):
        for lines in streams.values():
            while lines and not lines[-1].strip():
                lines.pop()
    problems = []
    for name in sorted(set(exp) | set(act)):
        e, a = exp.get(name, []), act.get(name, [])
        if unordered:
            e, a = sorted(e), sorted(a)
        if not matches(e, a):
            who = name or "the driver"
            problems.append(f"lines of {who}:\n" + "\n".join(
                difflib.unified_diff(e, a, "shown in the page", "printed", lineterm="", n=2)))
    return "\n".join(problems) or None


# --- running a page ----------------------------------------------------------------------------------------------

def environment() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"               # line by line, as on a terminal
    env.setdefault("ACTORS_STORE_CAPACITY", "64M")
    env.pop("PYTHONPATH", None)
    env.pop("ACTORS_CLUSTER_SECRET", None)      # the cluster page starts without a secret
    return env


class Services:
    """What a page's sessions run against, for the rest of the page: the etcd of its `etcd` block, and the commands
    of its `background` blocks."""

    PAGE_ETCD = "127.0.0.1:2379"

    def __init__(self, directory: str):
        self.directory = directory
        self.etcd = None
        self.address = ""
        self.background: list[Background] = []

    def start_etcd(self) -> None:
        self.etcd = EtcdServer(require_etcd())
        self.address = self.etcd.url[len("etcd://"):]

    def to_real(self, text: str) -> str:
        """The page's etcd address, as the etcd running for it."""
        return text.replace(self.PAGE_ETCD, self.address) if self.etcd else text

    def to_page(self, text: str) -> str:
        """Its address as the page shows it (never a longer number that starts with the same digits)."""
        return re.sub(re.escape(self.address) + r"(?!\d)", self.PAGE_ETCD, text) if self.etcd else text

    def start_background(self, step: Step) -> list[str]:
        process = Background(step, self)
        self.background.append(process)
        return process.started()

    def stop(self) -> list[str]:
        """Stop the background commands, in the order they started; the problems found in what they printed."""
        problems = []
        for process in self.background:
            problems += process.stop()
        return problems

    def close(self) -> None:
        """Whatever still runs (the page failed before its end) is killed; the etcd goes last."""
        for process in self.background:
            process.kill()
        if self.etcd is not None:
            self.etcd.close()


class Background:
    """A `background` block's command, started in a process group of its own, as in a terminal of its own."""

    def __init__(self, step: Step, services: Services):
        self.step = step
        self.services = services
        self.command, expected = step.commands[0]
        self.interrupt = any(line.startswith("^C") for line in expected)
        self.expected = [line[2:] if line.startswith("^C") else line for line in expected]   # ^C: the terminal's echo
        self.output = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(["bash", "-c", services.to_real(self.command)], cwd=services.directory,
                                        env=environment(), stdout=self.output, stderr=subprocess.STDOUT,
                                        start_new_session=True, text=True)

    def printed(self) -> list[str]:
        self.output.seek(0)
        return self.services.to_page(self.output.read()).split("\n")

    def started(self) -> list[str]:
        """Wait until it has printed as many lines as the block shows before an actor's line, `^C` or `...`."""
        if len(self.step.commands) != 1:
            return [f"a background block runs one command (block at line {self.step.line})"]
        shown = self.step.commands[0][1]
        ready = next((i for i, line in enumerate(shown) if line.startswith(("[", "^C")) or line.strip() == "..."),
                     len(shown))
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while len([line for line in self.printed() if line]) < ready:
            if self.process.poll() is not None or time.monotonic() > deadline:
                return [f"`{self.command}` (block at line {self.step.line}) did not start within {COMMAND_TIMEOUT} s "
                        f"(exit status {self.process.poll()}); its output:\n" + "\n".join(self.printed())]
            time.sleep(0.05)        # polling its output, with the deadline above
        return []

    def stop(self) -> list[str]:
        if self.process.poll() is None:
            if self.interrupt:
                os.killpg(self.process.pid, signal.SIGINT)      # Ctrl-C: to every process of the terminal's group
            else:
                self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            return [f"`{self.command}` (block at line {self.step.line}) did not stop within {COMMAND_TIMEOUT} s"]
        problems = []
        actual = self.printed()
        diff = compare(self.expected, actual, "numbers" in self.step.options, "unordered" in self.step.options)
        if diff:
            problems.append(f"`{self.command}` (block at line {self.step.line}):\n{diff}\nall it printed:\n"
                            + "\n".join(actual)[-3000:])
        if status != int(self.step.options.get("exit", 0)):
            problems.append(f"`{self.command}` (block at line {self.step.line}) exited with {status}")
        return problems

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(COMMAND_TIMEOUT)
        self.output.close()


def run_session(step: Step, directory: str, services: Services) -> list[str]:
    """The problems found running the session: each command's output against the page's."""
    problems = []
    env = environment()
    if "before" in step.options:
        subprocess.run(["bash", "-c", step.options["before"]], cwd=directory, env=env, timeout=COMMAND_TIMEOUT,
                       check=True)
    allowed = int(step.options.get("exit", 0))
    status = allowed
    for i, (command, expected) in enumerate(step.commands):
        if command.strip() == "echo $?":
            actual = [str(status)]
            status = allowed
        else:
            if status != allowed:
                problems.append(f"`{step.commands[i - 1][0]}` exited with {status}; the page shows no `echo $?`")
            try:
                out = subprocess.run(["bash", "-c", services.to_real(command)], cwd=directory, env=env,
                                     timeout=COMMAND_TIMEOUT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
            except subprocess.TimeoutExpired as exc:
                problems.append(f"`{command}` did not finish within {COMMAND_TIMEOUT} s; its output:\n"
                                f"{exc.output}")
                return problems
            status = out.returncode if out.returncode >= 0 else 128 - out.returncode    # as a shell shows it
            # a shell reports a command killed by a signal; a terminal shows it as the signal's name
            actual = [re.sub(r"^bash: line \d+: +\d+ (\w+).*", r"\1", line)
                      for line in services.to_page(out.stdout).split("\n")]
        diff = compare(expected, actual, "numbers" in step.options, "unordered" in step.options)
        if diff:
            printed = "\n".join(actual)[-3000:]
            problems.append(f"`{command}` (block at line {step.line}):\n{diff}\nall it printed:\n{printed}")
    if status != allowed:
        problems.append(f"`{step.commands[-1][0]}` exited with {status}; the page shows no `echo $?`")
    return problems


@pytest.mark.parametrize("page", pages("programs", PAGES))
def test_programs(page, tmp_path):
    """Every program of the page runs, and prints what the page shows."""
    todo = steps(page)
    if not todo:
        pytest.skip("no programs on this page")
    if any("etcd" in step.options for step in todo):
        require_etcd()              # before anything of the page runs: it skips without etcd (fails under CI)
    before = leftover_segments()
    problems = []
    services = Services(str(tmp_path))
    try:
        for step in todo:
            if "skip" in step.options:
                continue
            if "etcd" in step.options:
                services.start_etcd()
            elif step.kind == "program":
                (tmp_path / step.file).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / step.file).write_text(services.to_real(step.text) + "\n")
            elif "background" in step.options:
                problems += services.start_background(step)
            else:
                problems += run_session(step, str(tmp_path), services)
        problems += services.stop()
    finally:
        services.close()
    assert not problems, f"{page} drifted from the code:\n\n" + "\n\n".join(problems)
    assert leftover_segments() == before        # every program's segments are gone with its driver


def test_every_page_parses():
    """A program that the parser would not find, or a marker that names an unknown option, is a mistake in the
    page: this keeps the convention honest."""
    known = {"file", "skip", "numbers", "unordered", "exit", "before", "etcd", "background"}
    for page in PAGES:
        with open(os.path.join(ROOT, page)) as f:
            text = f.read()
        for line, _lang, _body, options, _adjacent in blocks(text):
            assert set(options) <= known, f"{page}:{line}: unknown test options {set(options) - known}"


@pytest.mark.parametrize("page", pages("doctests", [p for p in PAGES if ">>> " in open(os.path.join(ROOT, p)).read()]))
def test_doctests(page, tmp_path):
    """The page's `>>>` examples, run by doctest in a fresh interpreter (their class registrations and stores stay
    there), from a directory outside the source tree."""
    before = leftover_segments()
    out = subprocess.run([sys.executable, "-m", "doctest", "-o", "ELLIPSIS", "-o", "NORMALIZE_WHITESPACE",
                          os.path.join(ROOT, page)], cwd=tmp_path, env=environment(), timeout=COMMAND_TIMEOUT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert out.returncode == 0, f"{page}: its examples drifted from the code:\n{out.stdout}"
    assert leftover_segments() == before
