"""The capture's front door (``zeta_fx.capture.front.capture_model``), called directly: it
refuses what is not a module before tracing anything, and sees through a data-parallel
wrapper so that the graph's names are the inner model's own."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn

from zeta_fx.capture.front import capture_model
from zeta_fx.errors import NotAModuleError


def test_a_non_module_is_refused():
    with pytest.raises(NotAModuleError, match="expects an nn.Module .* got builtins.dict"):
        capture_model({"fc": nn.Linear(2, 2)})


def test_a_data_parallel_wrapper_is_seen_through():
    inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    captured = capture_model(nn.DataParallel(inner))
    assert captured.model is inner
    assert isinstance(captured.gm, fx.GraphModule)
    assert [n.target for n in captured.gm.graph.nodes if n.op == "call_module"] == ["0", "1", "2"]
    x = torch.randn(3, 4)
    assert torch.equal(captured.gm(x), inner(x))
