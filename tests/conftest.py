"""Fixtures shared by the test files, the import path, and the ``slow`` marker by folder.

The tests mirror the package's stages: ``semantics/``, ``capture/``, ``analysis/``,
``rules/``, ``plan/``, ``apply/``, ``report/``, ``gates/``; whole pipelines (compile, meta,
FSDP2, the CLI, the examples) in ``pipelines/``; real libraries in ``libraries/``; the
generated and adversarial soundness sweeps in ``soundness/``. The layout and the docs are
checked at the top (``test_layout.py``, ``test_readme.py``).

The independent checks (the oracle, snapshots, exact-set checks) are functions in
``tests/claims.py``; the generated and adversarial networks are ``tests/netgen.py`` and
``tests/advnets.py``; this file holds the fixtures: models several layers' tests build, and
the torch settings some files need.

Test modules are imported by their file name (pytest's default ``prepend`` mode, no
``__init__.py``), so a file name is unique across folders (pytest refuses a duplicate).
Every folder is on ``sys.path`` from the start: the helpers here import as ``claims``, and
a test module that reuses another's models imports it by name wherever it lives
(``from test_generated import nets``), as the same module pytest collects.

``pytest -m "not slow"`` is the edit-test loop (under a minute on two cores): the folders
in ``SLOW_FOLDERS`` are slow as a whole; elsewhere a module or a test says so itself
(``pytestmark = pytest.mark.slow``, ``@pytest.mark.slow``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

from zeta_fx.models import SEResNet

TESTS = Path(__file__).resolve().parent
for _folder in sorted(p for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
    if str(_folder) not in sys.path:
        sys.path.insert(1, str(_folder))
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

#: folders whose every test is slow: real libraries' models, hypothesis sweeps
SLOW_FOLDERS = {"libraries", "soundness"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        try:
            folder = Path(str(item.path)).resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue  # the package's doctests
        if folder in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)


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
