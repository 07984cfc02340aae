"""The ``deps`` command and the README's Python example."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from deps_core.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_train_demo_runs_and_prints_the_table(capsys):
    assert main(["train", "--samples", "2", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "ofa_mbv3_32" in out and re.search(r"^max\s+44444\s", out, re.M) and re.search(r"^min\s+22222\s", out, re.M)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--samples", "0"], "argument --samples: expected a positive integer, got 0"),
        (["train", "--space", "nope"], "unknown space 'nope'"),
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        ([], "the following arguments are required: command"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message):
    proc = subprocess.run([sys.executable, "-m", "deps_core.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 2, proc
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2  # usage line + error line at most


def test_spaces_command_lists_every_space(capsys):
    from deps_core.spaces import list_spaces

    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in list_spaces()) and "566.17" in out and "121.28" in out


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    exec(compile(block.replace("224, 224", "64, 64"), "README.md", "exec"), {})
