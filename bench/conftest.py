"""Benchmark hooks: an optional deadline after which the remaining benchmarks are skipped.

``DEPS_BENCH_DEADLINE`` (seconds since the epoch, as ``date +%s`` prints) lets a time-boxed run — a lease of the lent
GPU, ``bench/gpu_session.sh`` — end by itself before its cap: pytest then finishes normally and pytest-benchmark writes
its JSON for every benchmark that ran. (Interrupting pytest instead loses the JSON when a benchmark is cut before its
first round: pytest-benchmark fails on the empty one while saving.)
"""

from __future__ import annotations

import os
import time

import pytest


def _deadline() -> float | None:
    value = os.environ.get("DEPS_BENCH_DEADLINE")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise pytest.UsageError(
            f"DEPS_BENCH_DEADLINE must be seconds since the epoch (date +%s); got {value!r}"
        ) from None


def pytest_configure(config):
    _deadline()  # a bad value stops the run at once, before any benchmark


def pytest_runtest_setup(item):
    deadline = _deadline()
    if deadline is not None and time.time() > deadline:
        pytest.skip("DEPS_BENCH_DEADLINE passed: the remaining benchmarks are skipped")
