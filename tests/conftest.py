"""Fixtures shared by the test files.

The independent checks (the oracle, snapshots, exact-set checks) are functions in
``tests/claims.py``; this file holds the fixtures: models several layers' tests build, and
the torch settings some files need.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

from zeta_fx.models import SEResNet


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only contend on a busy machine (measured: the
    generated networks ran 6x faster with one thread on 2 shared cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _small_resnet() -> nn.Module:
    torch.manual_seed(0)
    return SEResNet(widths=(8, 16), depth=1)


@pytest.fixture
def small_resnet() -> Callable[[], nn.Module]:
    """Builds a fresh, seeded two-block SE-ResNet (widths 8 and 16) on each call: two
    instances are bit-identical. ``residual_branch_last`` zeroes ``blocks.0.bn3`` (identity
    skip) and ``blocks.1.bn3`` (projection skip ``blocks.1.downsample``)."""
    return _small_resnet
