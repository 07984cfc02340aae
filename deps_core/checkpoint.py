"""Checkpoints written atomically and read back safely.

A save writes ``last.pt.tmp``, flushes and fsyncs it, moves the current ``last.pt`` to ``prev.pt`` and renames the new
file to ``last.pt`` (then fsyncs the directory), so a crash at any moment leaves at least one complete checkpoint. A
small ``last.json`` beside it says where the run stood. Loading uses ``torch.load(weights_only=True)``: checkpoints
hold tensors, numbers, strings, lists and dicts only.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "supernet_from_checkpoint",
    "state_dict_mismatch",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "deps.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or not ours."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    state: dict[str, Any], directory: str | os.PathLike, *, summary: dict[str, Any] | None = None
) -> Path:
    """Write ``state`` as ``directory/last.pt`` atomically, keeping the previous one as ``prev.pt``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    last, prev, tmp = directory / "last.pt", directory / "prev.pt", directory / "last.pt.tmp"
    with open(tmp, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    if last.exists():
        os.replace(last, prev)
    os.replace(tmp, last)
    _fsync_dir(directory)
    if summary is not None:
        side = directory / "last.json.tmp"
        side.write_text(json.dumps(summary) + "\n")
        os.replace(side, directory / "last.json")
    return last


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint; ``CheckpointError`` names the file when it is missing, unreadable or not a deps checkpoint."""
    path = Path(path)
    if path.is_dir():  # a run directory or its checkpoints/ directory
        path = path / "checkpoints" / "last.pt" if (path / "checkpoints").is_dir() else path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    hint = f"; the previous checkpoint is {path.with_name('prev.pt')}" if path.with_name("prev.pt").is_file() else ""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut-off one lacks its central directory
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (not a complete PyTorch zip archive){hint}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False, which deps never does
        raise CheckpointError(
            f"{path} is not a deps checkpoint: it holds objects other than tensors and plain containers, which a "
            "weights-only load refuses"
        ) from None
    except Exception as err:  # a damaged archive
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: {first}){hint}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a deps checkpoint (format {CHECKPOINT_FORMAT!r})")
    return state


def supernet_from_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu", history: bool = False):
    """``(supernet, config)`` of a training checkpoint (a run directory or a ``.pt`` file), weights loaded;
    ``history=True``: ``(supernet, config, epoch records)``, the run's finished epochs as of the checkpoint (with the
    training cost so far in each record's ``"cost"``)."""
    from deps_core.config import ExperimentConfig
    from deps_core.spaces import create_supernet

    state = load_checkpoint(path, map_location=device)
    config = ExperimentConfig.from_dict(state["config"])
    net = create_supernet(
        config.model.space,
        num_classes=state["num_classes"],
        kernel_transform=config.model.kernel_transform,
        zero_init_residual=config.model.zero_init_residual,
        **config.model.space_kwargs(),
    )
    try:
        net.load_state_dict(state["model"])
    except RuntimeError:
        raise CheckpointError(
            f"{path}: the weights do not fit the {config.model.space} supernet its config describes "
            f"({state_dict_mismatch(net.state_dict(), state['model'])}); was it trained on another space or width?"
        ) from None
    if history:
        return net.to(device), config, json.loads(state.get("history") or "[]")
    return net.to(device), config


def state_dict_mismatch(expected: dict[str, Any], got: dict[str, Any]) -> str:
    """One line: how many tensors are missing, unexpected or of another shape, with the first of each."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and tuple(expected[k].shape) != tuple(got[k].shape)]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
        if keys:
            first = keys[0]
            if what == "of another shape":
                first += f" {tuple(got[keys[0]].shape)} vs {tuple(expected[keys[0]].shape)}"
            parts.append(f"{len(keys)} {what}, e.g. {first}")
    return "; ".join(parts) or "no tensor differs in name or shape"
