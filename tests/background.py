"""Subprocess checks that run beside the rest of the suite.

A few tests run fastconv in a fresh process that compiles every kernel it uses from
scratch (for another CPU target, or with bounds checking): a minute or more each on
one core, while the suite's own compiles keep the other core mostly idle. Such a
test registers its command with :func:`command` and is marked
``@pytest.mark.background(name)``; ``tests/conftest.py`` starts the commands of the
collected tests as soon as collection ends, and the test itself waits for its
process (:func:`wait`) and checks what it printed. A test run on its own, or with
the hook bypassed, starts its command when it waits.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
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
    """Start ``name``'s process, unless it is running or done already, or has nothing to
    run here."""
    if name in _RUNNING:
        return
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
    """Kill what still runs (a session stopped early) and remove the scratch folders."""
    for running in _RUNNING.values():
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait()
    if _ROOT:
        shutil.rmtree(_ROOT.pop(), ignore_errors=True)
