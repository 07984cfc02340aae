"""Shared test fixtures. Everything runs on the CPU unless marked ``gpu``."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("deps", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False)
settings.load_profile("deps")


@pytest.fixture(scope="session")
def ofa_networks():
    """OFA's own supernet classes (the pip package ``ofa``), the reference our interop is checked against.

    The package's ``ofa.utils`` imports a data-loader fork that needs ``torch._six`` (removed in PyTorch 2); it is
    never used by the networks, so a stand-in module with the one name it imports lets the real network code load.
    """
    sys.modules.setdefault("torch._six", types.SimpleNamespace(string_classes=(str, bytes)))
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3, OFAProxylessNASNets

    return {"mbv3": OFAMobileNetV3, "proxyless": OFAProxylessNASNets}


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(20240707)
