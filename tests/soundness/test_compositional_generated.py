"""Generated architectures, captured compositionally: the same graph and the same report.

Hypothesis draws networks from the generator of ``test_generated.py`` (``tests/netgen.py``)
and appends a second, distinct instance of every drawn block (the same spec, its own
parameters), so that blocks repeat; shared blocks called twice, FPN sums and conditioning
side inputs make joins and values that cross block boundaries. Then it perturbs one copy the
way a user's model differs from its siblings: a forward patched on the instance, a forward
hook on a module inside it, a plain attribute its forward may read. Each model is captured
with ``torch.export`` whole (``compositional=False``, the oracle) and compositionally; the
graphs must be the same node for node and ``zero_init_pass`` must make the same plan and the
same rows. Where the whole-model export fails, the compositional one must fail the same way.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import netgen
from netgen import Net
from test_compositional import graph_signature, rows
from test_generated import nets
from zeta_fx import zero_init_pass
from zeta_fx.capture import capture
from zeta_fx.errors import ZetaFxError

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = 40


def with_copies(spec: Net) -> Net:
    """``spec`` with a distinct instance of each of its blocks appended."""
    copies = tuple(("block", b) for kind, b in spec.units if kind == "block")
    return Net(spec.channels, spec.cond, spec.units + copies)


def perturb(model: nn.Module, how: str, pick: int) -> None:
    blocks = [m for m in model.modules() if isinstance(m, netgen.ResBlock)]
    if how == "none" or not blocks:
        return
    block = blocks[pick % len(blocks)]
    if how == "patched":
        block.forward = functools.partial(type(block).forward, block)
    elif how == "hook":
        inner = [m for m in block.modules() if m is not block] or [block]
        inner[pick % len(inner)].register_forward_hook(
            lambda m, a, out: out * 0.5 if isinstance(out, torch.Tensor) else out)
    elif how == "attribute":
        block.zeta_test_flag = pick  # a plain attribute (read by nothing: still the same)


def build(spec: Net, how: str, pick: int) -> nn.Module:
    model = netgen.build(spec, 0)
    perturb(model, how, pick)
    return model


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=nets(hard=True), how=st.sampled_from(("none", "patched", "hook", "attribute")),
       pick=st.integers(0, 7))
def test_compositional_capture_is_the_whole_model_capture(spec: Net, how: str, pick: int):
    spec = with_copies(spec)
    x, cond = netgen.example_inputs(spec)
    args = (x, cond) if spec.cond else (x,)
    outcomes = []
    for compositional in (False, True):
        model = build(spec, how, pick)
        try:
            gm = capture(model, example_inputs=args, method="export",
                         compositional=compositional)
        except ZetaFxError as exc:
            outcomes.append(("error", type(exc).__name__))
            continue
        report = zero_init_pass(build(spec, how, pick), dry_run=True, capture="export",
                                example_inputs=args, compositional=compositional)
        outcomes.append((graph_signature(gm), rows(report)))
    assert outcomes[1] == outcomes[0]
