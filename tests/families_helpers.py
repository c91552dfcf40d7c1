"""Shared checks for the architecture-family, rule and export tests."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from zero_checks import assert_unchanged, snapshot  # noqa: F401  (re-exported)
from zeta_fx import zero_init_pass


def params_of(*modules: str, names: Iterable[str] = ("weight", "bias")) -> set[str]:
    return {f"{m}.{n}" for m in modules for n in names}


def run_and_check(model: nn.Module, rule: Any, expected: set[str], **options: Any):
    """Run the pass; assert exactly ``expected`` became zero and everything else kept its bits."""
    before = snapshot(model)
    report = zero_init_pass(model, rule=rule, **options)
    assert set(report.params) == expected, sorted(set(report.params) ^ expected)
    assert len(report.params) == len(expected)
    after = snapshot(model)
    assert set(after) == set(before)
    for name, value in after.items():
        if name in expected:
            assert not value.any(), f"{name} was not zeroed"
            assert value.dtype == before[name].dtype
        else:
            assert torch.equal(value, before[name]), f"{name} changed"
    return report


class OutputRecorder:
    """Forward hooks that keep each named module's (first) output."""

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.outputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.handles = [model.get_submodule(n).register_forward_hook(self._hook(n))
                        for n in self.outputs]

    def _hook(self, name: str):
        def hook(module, args, output):
            value = output[0] if isinstance(output, tuple) else output
            self.outputs[name].append(value.detach().clone())
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def assert_all_zero(self) -> None:
        for name, values in self.outputs.items():
            assert values, f"{name} did not run"
            for value in values:
                assert value.abs().max().item() == 0.0, f"{name} output is not zero"
