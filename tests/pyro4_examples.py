"""Running Pyro4 4.82's example programs, on real Pyro4 or on pyro_loops through the shim.

Nothing of the examples is kept in this repository: the Pyro4 sdist is fetched
with pip into a cache folder (:func:`sdist_examples`), and the table in
``pyro4_examples_table.py`` says only how to run each example. An example runs
in a private copy of its folder, with its own name server on free localhost
ports (``PYRO_NS_HOST``/``PYRO_NS_PORT``/``PYRO_NS_BCPORT`` point every process
at it, so parallel runs never meet), its servers started and waited for, and
its client fed on stdin. The outcome is the client's exit status and its
output lines that matter, normalised (:func:`normalise`) so that two runs on
different ports, object ids and timings compare equal.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from _util import free_port, peer_env

PYRO4_VERSION = "4.82"
FLAVOURS = ("pyro4", "pyro_loops")
#: Servers are up once they print a line like one of these (serveSimple ends with "Pyro daemon running.").
DEFAULT_READY = r"(?i)\b(running|ready|started|available)\b"
SERVER_START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Server:
    """A process an example needs running before its client: a script or ``-m module``."""

    script: str
    args: tuple[str, ...] = ()
    ready: str = DEFAULT_READY  #: regex of the stdout line that says the server is up
    stdin: str = ""  #: typed once at start (servertypes asks which server type)


@dataclass(frozen=True)
class Example:
    """How to run one example folder of the sdist, and which client lines to compare."""

    name: str  #: folder under examples/
    client: str  #: the script whose exit status and output are compared (or "-m module")
    servers: tuple[Server, ...] = ()
    args: tuple[str, ...] = ()
    stdin: str = ""  #: typed into the client; {uri} is the first PYRO: URI the first server printed
    keys: tuple[str, ...] = ()  #: regexes of the client lines that matter; () = every line
    unordered: str = ""  #: regex whose group 1 is a comma-separated list printed from a set: compared sorted
    env: tuple[tuple[str, str], ...] = ()  #: extra environment, for every process of the example
    own_ns: bool = False  #: the example starts its own name server (on PYRO_NS_PORT): start none for it
    requires: tuple[str, ...] = ()  #: third-party modules it imports (the test skips without them)
    captures: tuple[str, ...] = ()  #: regexes with named groups, searched in the servers' output, for stdin
    timeout: float = 60.0  #: seconds the client may take
    xfail: str | None = None  #: why it still differs on pyro_loops (the missing API or semantic)
    label: str = ""  #: test id, when one folder gives several examples (default: the folder name)

    @property
    def id(self) -> str:
        return self.label or self.name


@dataclass
class Outcome:
    """What one run of an example produced."""

    returncode: int | None
    lines: list[str]
    stdout: str = ""
    stderr: str = ""
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"exit status {self.returncode}\n--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n"
                f"{self.stderr[-3000:]}" + "".join(f"\n{note}" for note in self.notes))


# --- obtaining the examples -------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where the sdist is kept between runs: $PYRO_LOOPS_TEST_CACHE or ~/.cache/pyro_loops-tests."""
    return Path(os.environ.get("PYRO_LOOPS_TEST_CACHE") or Path.home() / ".cache" / "pyro_loops-tests")


def sdist_examples() -> tuple[Path | None, str]:
    """The unpacked sdist's ``examples`` folder, downloading it once; or (None, why not)."""
    root = cache_dir() / f"Pyro4-{PYRO4_VERSION}"
    if (root / "examples").is_dir():
        return root / "examples", ""
    cache_dir().mkdir(parents=True, exist_ok=True)
    download = tempfile.mkdtemp(dir=cache_dir())
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               f"Pyro4=={PYRO4_VERSION}", "-d", download, "--disable-pip-version-check"],
                              capture_output=True, text=True, timeout=300)
        archives = list(Path(download).glob(f"Pyro4-{PYRO4_VERSION}.tar.gz"))
        if done.returncode != 0 or not archives:
            last = (done.stderr.strip().splitlines() or ["no archive downloaded"])[-1]
            return None, f"cannot download the Pyro4 {PYRO4_VERSION} sdist from the package index: {last}"
        with tarfile.open(archives[0]) as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(download, filter="data")
            else:  # Python 3.10/3.11 before the filter backport
                archive.extractall(download)  # noqa: S202 - the archive pip verified from the index
        os.replace(Path(download) / f"Pyro4-{PYRO4_VERSION}", root)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    return root / "examples", ""


# --- normalising output -------------------------------------------------------------------------------------------

_NORMALISE = [
    # a PYROMETA uri's tags: Pyro4 writes its set in hash order, which differs by Python
    # version even under one PYTHONHASHSEED (3.11 changed the string hash); pyro_loops sorts them
    (re.compile(r"\bPYROMETA:([^@\s'\">]+)"), lambda found: "PYROMETA:" + ",".join(sorted(found[1].split(",")))),
    # the clock, read at another moment by each run (also right after an ISO date's "T")
    (re.compile(r"(?<![\d:])\d{2}:\d{2}:\d{2}(?:\.\d+)?"), "<time>"),
    (re.compile(r"datetime\.datetime\([\d, ]+\)"), "datetime.datetime(<time>)"),
    (re.compile(r"\b(PYRO|PYRONAME|PYROMETA):([^@\s'\",]*)@(\[[^\]]*\]|[^\s'\",)>]+)"), r"\1:\2@<loc>"),
    (re.compile(r"obj_[0-9a-f]{32}"), "obj_<id>"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"0x[0-9a-fA-F]+"), "0x<addr>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\blocalhost\b"), "<host>"),
    (re.compile(r"(<host>['\"]?(?::|,\s*))\d+"), r"\1<port>"),
    (re.compile(r"\b(Pyro4|pyro_loops)(?:\.[a-z_]+)*\.(?=[A-Z])"), "Pyro4."),
    (re.compile(r"\d+\.\d+(?:e[-+]?\d+)?"), "<num>"),
    (re.compile(r"\b\d{9,}\b"), "<int>"),  # id() values
    (re.compile(r"\b(?:Thread-\d+|Dummy-\d+|MainThread)(?: \([\w-]+\))?"), "<thread>"),
]


def normalise(line: str) -> str:
    """``line`` with what differs between runs (addresses, ports, ids, timings) replaced by markers."""
    for pattern, replacement in _NORMALISE:
        line = pattern.sub(replacement, line)
    return line.rstrip()


#: Server worker threads: which calls share one is the point of some examples, not the name.
_WORKER = re.compile(r"\b(?:Pyro-Worker|pyro_loops-worker)-\d+")
_FRAME = re.compile(r"^[\s|]*File \"")
_SOURCE = re.compile(r"^(?:\s*\|)?\s{4,}\S")  # the source line under a frame (indented deeper than "File")


def _without_frames(stdout: str) -> list[str]:
    """The lines of ``stdout`` without traceback frames (file, line and source differ by implementation)."""
    kept: list[str] = []
    in_frame = False
    for line in stdout.splitlines():
        if _FRAME.match(line):
            in_frame = True
        elif not (in_frame and _SOURCE.match(line)):
            in_frame = False
            kept.append(line)
    return kept


def key_lines(stdout: str, keys: tuple[str, ...], unordered: str = "") -> list[str]:
    """The normalised lines of ``stdout`` that match one of ``keys`` (all non-blank ones if none).

    Traceback frames are left out: the exception and its message are what an
    example shows, not the library's call stack.
    """
    workers: dict[str, str] = {}  # worker thread names, numbered in order of appearance

    def worker(found: re.Match) -> str:
        return workers.setdefault(found.group(0), f"<worker {len(workers) + 1}>")

    lines = [normalise(_WORKER.sub(worker, line)) for line in _without_frames(stdout) if line.strip()]
    if unordered:
        lines = [_sorted_list(line, unordered) for line in lines]
    if not keys:
        return lines
    patterns = [re.compile(key) for key in keys]
    return [line for line in lines if any(p.search(line) for p in patterns)]


def _sorted_list(line: str, pattern: str) -> str:
    """``line`` with the comma-separated list that ``pattern``'s group 1 matched put in sorted order."""
    found = re.search(pattern, line)
    if not found:
        return line
    items = ", ".join(sorted(item.strip() for item in found.group(1).split(",")))
    return line[:found.start(1)] + items + line[found.end(1):]


# --- running ------------------------------------------------------------------------------------------------------

def _cwd(folder: Path, script: str) -> Path:
    """Scripts run from their own folder (some open files next to them)."""
    return folder if script.startswith("-m ") else (folder / script).parent


def _command(flavour: str, script: str) -> list[str]:
    """The command line for ``script`` ("x.py" or "-m module") on real Pyro4 or through the shim."""
    target = script.split() if script.startswith("-m ") else [Path(script).name]
    shim = ["-m", "pyro_loops.compat"] if flavour == "pyro_loops" else []
    return [sys.executable, "-u", *shim, *target]


class _Process:
    """A started server: its stdout is collected in a thread so it can be waited on."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], stdin: str) -> None:
        self.args = args
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.output: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()
        if stdin:
            self.proc.stdin.write(stdin)
            self.proc.stdin.flush()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.output.append(line)
                self._changed.notify_all()
        with self._changed:
            self.output.append("")  # end of output
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match | None:
        """The first match of ``pattern`` in the output so far or to come; None on timeout or exit."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.output[seen:]:
                    if line == "":
                        return None
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self.output)
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    return None

    def text(self) -> str:
        with self._changed:
            return "".join(self.output)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


def run_example(example: Example, flavour: str, examples_dir: Path, workdir: Path) -> Outcome:
    """Run ``example`` on ``flavour`` ("pyro4" or "pyro_loops") in a copy of its folder under ``workdir``."""
    folder = workdir / flavour / "examples" / example.name
    shutil.copytree(examples_dir / example.name, folder)
    (workdir / flavour / "certs").symlink_to(examples_dir.parent / "certs")  # the ssl example's ../../certs
    ns_port = free_port()
    env = peer_env(PYTHONHASHSEED="0", PYRO_NS_HOST="127.0.0.1", PYRO_NS_PORT=str(ns_port), PYRO_NS_BCPORT=str(free_port()),
                   **dict(example.env))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))
    started: list[_Process] = []
    notes: list[str] = []
    try:
        if not example.own_ns:
            ns = _Process(_command(flavour, "-m Pyro4.naming") + ["-n", "127.0.0.1", "-p", str(ns_port)], folder,
                          env, "")
            started.append(ns)
            if ns.wait_for(r"NS running", SERVER_START_TIMEOUT) is None:
                return Outcome(None, [], notes=[f"name server did not start:\n{ns.text()}"])
        servers_from = len(started)
        uri = ""
        for server in example.servers:
            proc = _Process(_command(flavour, server.script) + list(server.args), _cwd(folder, server.script),
                            env, server.stdin)
            started.append(proc)
            if proc.wait_for(server.ready, SERVER_START_TIMEOUT) is None:
                return Outcome(None, [], notes=[f"server {server.script} never said {server.ready!r}:\n{proc.text()}"])
            if not uri and "{uri}" in example.stdin:
                proc.wait_for(r"PYRO:", SERVER_START_TIMEOUT)  # some print their URI after the ready line
            found = re.search(r"PYRO:[^\s'\"]+", proc.text())
            uri = uri or (found.group(0) if found else "")
        fields = {"uri": uri}
        for capture in example.captures:
            found = re.search(capture, "".join(proc.text() for proc in started[servers_from:]))
            fields.update(found.groupdict() if found else {})
        try:
            done = subprocess.run(_command(flavour, example.client) + list(example.args),
                                  cwd=_cwd(folder, example.client), env=env,
                                  input=example.stdin.format(**fields), capture_output=True, text=True,
                                  timeout=example.timeout, start_new_session=True)
            returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:
            returncode, stdout = None, _text(exc.stdout)
            stderr = _text(exc.stderr) + f"\n(client killed after {example.timeout} s)"
        for proc in started[servers_from:]:
            notes.append(f"--- server {proc.args[-1]} ---\n{proc.text()[-1500:]}")
        return Outcome(returncode, key_lines(stdout, example.keys, example.unordered), stdout, stderr, notes)
    finally:
        for proc in reversed(started):
            proc.stop()


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
