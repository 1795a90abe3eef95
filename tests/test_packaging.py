"""Packaging as a user meets it: the benchmarks run in the bench extra's environment
alone (no nbmake), one version source, the MIT licence declared, extras with lower
bounds and the tested pins in constraints.txt, and no file pointing outside the
repository."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

import fastconv
from tests import background

ROOT = pathlib.Path(__file__).resolve().parents[1]

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_benchmarks_run_without_nbmake(tmp_path):
    """``pytest benchmarks/ --benchmark-only`` as in an environment with the bench extra
    alone (nbmake blocked), on one small group, with pytest-benchmark's own options
    honoured (the rounds and the time per benchmark)."""
    pytest.importorskip("pytest_benchmark")
    report = tmp_path / "bench.json"
    # a time shorter than one call (over 100 us), so that the minimum decides: exactly
    # min_rounds rounds (pytest-benchmark's default is 5, fastconv.bench's timing 5 to 1000)
    min_rounds, max_time = 2, 0.00001
    command = [
        sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-only", "-p", "no:nbmake",
        "-p", "no:cacheprovider", "-q",
        "-k", "repeat_unpool2d-x2 and not backward and not reference",
        f"--benchmark-max-time={max_time}", f"--benchmark-min-rounds={min_rounds}",
        f"--benchmark-json={report}",
    ]
    child = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-4000:]
    benchmarks = json.loads(report.read_text(encoding="utf-8"))["benchmarks"]
    assert benchmarks, child.stdout[-4000:]
    for entry in benchmarks:
        assert entry["group"] == "repeat_unpool2d|x2"
        assert entry["options"]["min_rounds"] == min_rounds
        assert entry["options"]["max_time"] == max_time
        assert entry["stats"]["rounds"] == min_rounds, entry["stats"]


#: What a user of the benchmarks does, as one script: a fresh virtual environment with
#: only the bench extra, then ``pytest benchmarks/ --benchmark-only`` on one group.
_BENCH_EXTRA_ALONE = """
import subprocess, sys
venv = sys.argv[1]
subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
python = venv + ("/Scripts/python.exe" if sys.platform == "win32" else "/bin/python")
install = subprocess.run(
    [python, "-m", "pip", "install", "-q", "-c", "constraints.txt", "-e", ".[bench]"],
    capture_output=True, text=True, timeout=1200)
if install.returncode:
    sys.exit("install failed: " + install.stdout[-4000:] + install.stderr[-4000:])
print("LISTED", subprocess.run([python, "-m", "pip", "list"], capture_output=True, text=True,
                               check=True).stdout.replace(chr(10), " "))
child = subprocess.run(
    [python, "-m", "pytest", "benchmarks/", "--benchmark-only", "-q", "-p", "no:cacheprovider",
     "-k", "repeat_unpool2d-x2 and not backward", "--benchmark-max-time=0.00001",
     "--benchmark-min-rounds=2"], capture_output=True, text=True, timeout=600)
print(child.stdout[-4000:])
print(child.stderr[-4000:], file=sys.stderr)
sys.exit(child.returncode)
"""


@background.command("bench-extra-alone")
def _bench_extra_alone(scratch: pathlib.Path) -> background.Command:
    return background.Command([sys.executable, "-c", _BENCH_EXTRA_ALONE,
                               str(scratch / "bench-venv")], dict(os.environ), ROOT)


@pytest.mark.background("bench-extra-alone")
def test_the_bench_extra_alone_runs_a_benchmark_group():
    """What a user of the benchmarks does: a fresh virtual environment with only
    ``pip install -c constraints.txt -e '.[bench]'``, then ``pytest benchmarks/
    --benchmark-only`` on one group (pip's own configuration finds the wheels, as for
    ``make test``); started beside the suite."""
    done = background.wait("bench-extra-alone", timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    listed = done.stdout.split("LISTED", 1)[1].splitlines()[0]
    assert "nbmake" not in listed and "pytest-benchmark" in listed
    assert re.search(r"\b[1-9]\d* passed", done.stdout), done.stdout[-2000:]


def test_pytest_addopts_need_only_pytest_benchmark():
    """nbmake is in the test extra only: the options that need it come from ``make test``."""
    options = _pyproject()["tool"]["pytest"]["ini_options"]
    assert "--nbmake" not in options.get("addopts", "")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"-m pytest --benchmark-disable --doctest-modules --nbmake\b", makefile)


def test_one_version_source():
    project = _pyproject()
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "fastconv.__version__"}

    # the single literal, in fastconv/__init__.py, and no other assignment in the package
    assignments = {}
    for path in sorted((ROOT / "fastconv").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if any(isinstance(t, ast.Name) and t.id == "__version__" for t in targets):
                assignments[path.relative_to(ROOT).as_posix()] = node.value
    assert list(assignments) == ["fastconv/__init__.py"]
    value = assignments["fastconv/__init__.py"]
    assert isinstance(value, ast.Constant) and value.value == fastconv.__version__


def test_version_is_read_without_importing_fastconv():
    """setuptools reads ``fastconv.__version__`` statically: building the metadata does
    not import fastconv (nor Numba)."""
    pytest.importorskip("setuptools")
    script = textwrap.dedent("""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("fastconv", "numba", "numpy"):
                    raise ImportError("imported " + name)

        sys.meta_path.insert(0, Block())
        from setuptools.config.pyprojecttoml import read_configuration

        print(read_configuration("pyproject.toml")["project"]["version"])
    """)
    child = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split()[-1] == fastconv.__version__


def test_mit_license():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 The fastconv authors" in text
    assert "Permission is hereby granted, free of charge" in text
    project = _pyproject()["project"]
    assert project["license"] == "MIT"
    assert "LICENSE" in project["license-files"]


def test_extras_have_lower_bounds_and_constraints_pin():
    """Extras bound torch from below; the exact tested version is in constraints.txt,
    which every ``pip install`` of the Makefile passes."""
    extras = _pyproject()["project"]["optional-dependencies"]
    for name in ("test", "bench", "torch", "notebooks"):
        torch = [req for req in extras[name] if re.match(r"torch\b", req)]
        assert torch and all(">=" in req and "==" not in req for req in torch), (name, torch)
    pins = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    assert any(re.fullmatch(r"torch==[\w.]+", line.strip()) for line in pins)
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    installs = re.findall(r"^\t.*pip install.*$", makefile, re.M)
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert all("constraints.txt" in line
               for line in re.findall(r"^\$\(VENV\)/\.installed-\w+:.*$", makefile, re.M))


def test_no_tracked_file_points_outside_the_repository():
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    listing = subprocess.run([git, "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             timeout=60)
    if listing.returncode != 0:
        pytest.skip("not a git checkout")
    needle = b"../" + b"shared"  # split, so that this file does not match itself
    offenders = [
        name for name in listing.stdout.decode().split("\0")
        if name and (ROOT / name).is_file() and needle in (ROOT / name).read_bytes()
    ]
    assert not offenders
