"""The ``deps`` command's parsing and listing, and the README's Python example (training: test_trainer.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deps_core.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "model.space=nope"], "model.space must be one of"),
        ([], "the following arguments are required: command"),
        (["train", "--restart", "--resume", "runs/x"], "argument --resume: not allowed with argument --restart"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message):
    proc = subprocess.run([sys.executable, "-m", "deps_core.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 2, proc
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2  # usage line + error line at most


def test_the_command_line_starts_without_importing_what_only_some_commands_need():
    # every `deps` command pays for what deps_core.cli imports; these load when a command reaches them
    heavy = "{'torchvision', 'ffcv', 'numba', 'triton', 'matplotlib', 'onnx'}"
    code = f"import sys, deps_core.cli; print(sorted({heavy} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc


def test_overrides_may_come_before_between_and_after_options_and_the_last_one_wins(capsys):
    argv = ["train", "optim.lr=0.3", "--dry-run", "run.seed=2", "--preset", "deps-mbv3-cifar10", "optim.lr=0.4"]
    assert main(argv) == 0
    config = json.loads(capsys.readouterr().out)
    assert (config["optim"]["lr"], config["run"]["seed"], config["method"]["epochs"]) == (0.4, 2, 200)
    for argv, stray in ((["train", "--dry-run", "x=1", "--bogus"], "--bogus"), (["spaces", "a.b=1"], "a.b=1")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and f"unrecognized arguments: {stray}" in capsys.readouterr().err


def test_ctrl_c_in_any_command_is_one_line_and_exit_130(capsys, monkeypatch):
    import deps_core.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_spaces", interrupted)
    assert main(["spaces"]) == 130
    assert capsys.readouterr().err.strip() == "deps spaces: interrupted"


def test_spaces_command_lists_every_space(capsys):
    from deps_core.spaces import list_spaces

    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in list_spaces()) and "566.17" in out and "121.28" in out


def test_readme_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPS_CACHE", str(tmp_path))  # the loaders example builds the synthetic set's val split
    monkeypatch.chdir(tmp_path)  # the trainer example writes runs/readme
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 4
    exec(compile("\n".join(blocks).replace("224, 224", "64, 64"), "README.md", "exec"), {})


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    # `deps train --dry-run | head -1`: the pipe's reader is gone before deps writes
    proc = subprocess.Popen(
        [sys.executable, "-m", "deps_core.cli", "train", "--dry-run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # deps is still importing torch: its first write meets a closed pipe
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == "", err  # 128 + SIGPIPE, as a shell pipeline's writer, no trace
