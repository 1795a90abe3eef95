"""Subprocess checks that run beside the rest of the suite.

A few tests run fastconv in a fresh process that compiles every kernel it uses from
scratch (for another CPU target, or with bounds checking): a minute or more each on
one core, while the suite's own compiles keep the other core mostly idle. Such a
test registers its command with :func:`command` and is marked
``@pytest.mark.background(name)``; ``tests/conftest.py`` queues the commands of the
collected tests as soon as collection ends (:func:`schedule`), and they run one at
a time, in that order, on the core the suite leaves (all at once, they slowed the
suite more than they saved). The test itself waits for its process (:func:`wait`)
and checks what it printed; one whose command has not started yet starts it then,
as does a test run on its own.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple


class Command(NamedTuple):
    argv: list[str]
    env: dict[str, str]
    cwd: Path | None = None


class _Running(NamedTuple):
    process: subprocess.Popen
    stdout: Path
    stderr: Path


#: The registered commands by name: each made from a scratch folder of its own.
_COMMANDS: dict[str, Callable[[Path], Command | None]] = {}
_RUNNING: dict[str, _Running] = {}
_ROOT: list[Path] = []
_QUEUE: list[str] = []
_LOCK = threading.RLock()


def command(name: str):
    """Register ``make(scratch) -> Command | None`` as the background command ``name``
    (None: nothing to run here, the test skips)."""
    def register(make: Callable[[Path], Command | None]) -> Callable[[Path], Command | None]:
        if name in _COMMANDS and _COMMANDS[name] is not make:
            raise ValueError(f"background command {name!r} registered twice")
        _COMMANDS[name] = make
        return make
    return register


def _scratch() -> Path:
    if not _ROOT:
        _ROOT.append(Path(tempfile.mkdtemp(prefix="fastconv-background-")))
        atexit.register(stop_all)
    return _ROOT[0]


def start(name: str) -> None:
    """Start ``name``'s process now, unless it is running or done already, or has nothing
    to run here."""
    with _LOCK:
        if name in _RUNNING:
            return
        if name in _QUEUE:
            _QUEUE.remove(name)
        folder = _scratch() / name
        folder.mkdir(exist_ok=True)
        made = _COMMANDS[name](folder)
        if made is None:
            return
        argv, env, cwd = made
        stdout, stderr = folder / "stdout.txt", folder / "stderr.txt"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=err,
                                       stdin=subprocess.DEVNULL)
        _RUNNING[name] = _Running(process, stdout, stderr)


def schedule(names: list[str]) -> None:
    """Run these commands one after another, in order, on a thread of this process."""
    with _LOCK:
        _QUEUE.extend(name for name in dict.fromkeys(names)
                      if name not in _RUNNING and name not in _QUEUE)
    threading.Thread(target=_run_queue, name="fastconv-background", daemon=True).start()


def _run_queue() -> None:
    while True:
        with _LOCK:
            if not _QUEUE:
                return
            name = _QUEUE[0]
            start(name)
            running = _RUNNING.get(name)
        if running is not None:
            running.process.wait()


def wait(name: str, timeout: float) -> subprocess.CompletedProcess:
    """``name``'s finished process (started now if it was not), with its output as text;
    killed, and TimeoutExpired raised, after ``timeout`` seconds of waiting here."""
    start(name)
    if name not in _RUNNING:
        raise LookupError(f"background command {name!r} has nothing to run here")
    running = _RUNNING[name]
    try:
        running.process.wait(timeout)
    except subprocess.TimeoutExpired:
        running.process.kill()
        running.process.wait()
        raise
    return subprocess.CompletedProcess(
        running.process.args, running.process.returncode,
        running.stdout.read_text(errors="replace"), running.stderr.read_text(errors="replace"))


def stop_all() -> None:
    """Kill what still runs (a session stopped early), forget the queue and remove the
    scratch folders."""
    with _LOCK:
        _QUEUE.clear()
    for running in _RUNNING.values():
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
    if _ROOT:
        shutil.rmtree(_ROOT.pop(), ignore_errors=True)
