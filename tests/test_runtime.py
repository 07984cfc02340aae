"""The deps program's CPU settings: thread counts per process, and the allocator setting."""

from __future__ import annotations

import os

import pytest
import torch

from deps_core import runtime


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize(
    "cores,loader,procs,expected",
    [(2, 1, 1, 2), (8, 1, 1, 7), (8, 2, 1, 6), (8, 1, 2, 3), (8, 1, 4, 2), (2, 1, 2, 1), (4, 1, 8, 1)],
)
def test_threads_share_the_cores(monkeypatch, restore_threads, cores, loader, procs, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert runtime.cpu_threads(loader, procs) == expected == torch.get_num_threads()


def test_explicit_omp_num_threads_wins(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    assert runtime.cpu_threads(1, 1) == 1 == torch.get_num_threads()


def test_allocator_setting_takes_effect_on_glibc():
    import ctypes.util

    if ctypes.util.find_library("c") is None:
        pytest.skip("no C library to configure")
    assert runtime.tune_cpu_allocator() is True
