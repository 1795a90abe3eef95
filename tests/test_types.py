"""The public types, as a type checker sees them: ``mypy`` (configured in pyproject.toml)
finds no error in fastconv, and a user's code gets precise types: an int or a pair from
``conv_output_size``, a pair from ``max_pool2d(..., return_indices=True)``, an array (not
Any) from calling an ``nn`` layer, and an error for a misspelt padding.

Both run mypy in a subprocess from the repository root, beside the rest of the suite
(``tests/background.py``); its cache (``.mypy_cache``) makes a second run take seconds.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import sys
import textwrap

import pytest

from tests import background

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed (it is in the test extra: pip install -e '.[test]')",
)

# Each line ending in "# E: text" must get a mypy error whose message contains text, each
# "# R: start ... part ..." a revealed type that starts with start and holds each part after
# it in order; no other line may get an error.
SNIPPET = '''
import numpy as np
import torch

import fastconv
import fastconv.torch as fct
from fastconv import nn

x = np.zeros((1, 1, 8, 8), np.float32)
w = np.zeros((2, 1, 3, 3), np.float32)
t = torch.zeros(1, 1, 8, 8)
flag = bool(x.size)

s: int = fastconv.conv_output_size(32, 5)
hw: tuple[int, int] = fastconv.conv_output_size((32, 32), 5)
hw2: tuple[int, int] = fastconv.conv_output_size(x.shape[-2:], 3, 2, padding="same")
reveal_type(fastconv.conv_output_size(32, 5))  # R: int
reveal_type(fastconv.conv_output_size([32, 32], 5))  # R: tuple[int, int]

y, i = fastconv.max_pool2d(x, 2, return_indices=True)
reveal_type(y)  # R: numpy.ndarray[
reveal_type(i)  # R: numpy.ndarray[
reveal_type(fastconv.max_pool2d(x, 2))  # R: numpy.ndarray[
reveal_type(fastconv.max_pool2d(x, 2, 2, 0, 1, False, True))  # R: tuple[numpy.ndarray[
either = fastconv.max_pool2d(x, 2, return_indices=flag)
reveal_type(either)  # R: numpy.ndarray[ ... ] | tuple[numpy.ndarray[

pad: fastconv.Padding = ((0, 1), (1, 0))
fastconv.conv2d(x, w, padding=pad)
fastconv.conv2d(x, w, padding="same")
fastconv.conv2d(x, w, padding="sme")  # E: "padding" to "conv2d"
fastconv.conv2d_backward(x, x, w, padding="vaild")  # E: "padding" to "conv2d_backward"
fastconv.conv_transpose2d(x, w, padding=(1, 2))
fastconv.conv_transpose2d(x, w, padding="same")  # E: "padding" to "conv_transpose2d"
fastconv.max_pool2d(x, 2, padding="same")  # E: "max_pool2d"

out: np.ndarray = nn.Conv2d(1, 2, 3, padding="same")(x)
reveal_type(nn.Conv2d(1, 2, 3)(x))  # R: numpy.ndarray[
reveal_type(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())(x))  # R: numpy.ndarray[
reveal_type(nn.MaxUnpool2d(2)(x, i))  # R: numpy.ndarray[
reveal_type(nn.MaxPool2d(2)(x))  # R: numpy.ndarray[
reveal_type(nn.MaxPool2d(2, return_indices=True)(x))  # R: tuple[numpy.ndarray[
nn.Conv2d(1, 2, 3, padding="sme")  # E: "padding" to "Conv2d"
nn.ConvTranspose2d(1, 2, 3, padding="same")  # E: "padding" to "ConvTranspose2d"

reveal_type(fct.conv2d(t, t, padding="same"))  # R: torch.
reveal_type(fct.max_pool2d(t, 2))  # R: torch.
reveal_type(fct.max_pool2d(t, 2, return_indices=True))  # R: tuple[torch.
reveal_type(fct.MaxPool2dFunction.apply(t, 2, None, 0, 1, False, True, "auto"))  # R: tuple[
fct.conv2d(t, t, padding="sme")  # E: "padding" to "conv2d"
fct.Conv2d(1, 2, 3, padding="sme")  # E: "padding" to "Conv2d"
'''


def _mypy(*args: str) -> background.Command:
    return background.Command([sys.executable, "-m", "mypy", *args], dict(os.environ), ROOT)


@background.command("mypy-fastconv")
def _mypy_fastconv(scratch: pathlib.Path) -> background.Command:
    return _mypy()


@background.command("mypy-snippet")
def _mypy_snippet(scratch: pathlib.Path) -> background.Command:
    snippet = scratch / "snippet.py"
    snippet.write_text(textwrap.dedent(SNIPPET), encoding="utf-8")
    return _mypy("--follow-imports=silent", "--cache-dir", str(ROOT / ".mypy_cache" / "snippet"),
                 "--hide-error-context", "--no-pretty", str(snippet))


@pytest.mark.background("mypy-fastconv")
def test_mypy_finds_no_error_in_fastconv():
    """``python -m mypy`` as pyproject.toml configures it: every file of fastconv."""
    result = background.wait("mypy-fastconv", timeout=600)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if ": error:" in line]
    assert result.returncode == 0 and not errors, output


@pytest.mark.background("mypy-snippet")
def test_public_types_are_precise():
    """The snippet's expectations (see SNIPPET): revealed types and exactly the errors
    marked. Errors inside fastconv are left to the test above (--follow-imports=silent);
    a cache of its own keeps the two runs from invalidating each other's."""
    result = background.wait("mypy-snippet", timeout=600)
    snippet = pathlib.Path(result.args[-1])
    output = result.stdout + result.stderr
    assert "snippet.py" in output, output  # mypy ran on it (and crashed on nothing)
    found: dict[int, list[tuple[str, str]]] = {}
    for match in re.finditer(r"^.*snippet\.py:(\d+): (error|note): (.*)$", output, re.MULTILINE):
        found.setdefault(int(match[1]), []).append((match[2], match[3]))
    lines = snippet.read_text(encoding="utf-8").splitlines()
    expected_errors = set()
    for number, line in enumerate(lines, start=1):
        got = found.get(number, [])
        errors = [message for kind, message in got if kind == "error"]
        revealed = [message for kind, message in got if message.startswith("Revealed type")]
        if "# E: " in line:
            expected_errors.add(number)
            text = line.split("# E: ", 1)[1]
            assert any(text in message for message in errors), (line, got, output)
        elif "# R: " in line:
            start, *parts = line.split("# R: ", 1)[1].split(" ... ")
            assert len(revealed) == 1, (line, got, output)
            # mypy before 2.0 writes builtins.int, later versions int
            shown = revealed[0].removeprefix("Revealed type is ").strip('"').replace(
                "builtins.", "")
            assert shown.startswith(start) and not shown.startswith("Any"), (line, shown)
            position = len(start)
            for part in parts:
                position = shown.find(part, position)
                assert position >= 0, (line, shown, part)
        else:
            assert not errors, (line, errors)
    assert {n for n, got in found.items() if any(k == "error" for k, _ in got)} \
        == expected_errors, output
