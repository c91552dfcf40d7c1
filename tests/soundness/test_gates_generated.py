"""``gate_residuals`` on the generated networks of ``tests/netgen.py``, judged by running.

For every drawn network (the plain ones and the "hard" ones: flattened sums, in-place
merges, hooks, leaves with their own forward, ...): with ``init=1.0`` the gated module's
output equals the model's bit for bit; with ``init=0.0`` each gated merge equals its skip
value, exactly and finite, read by the node names the gates report; the caller's model is
unchanged. Same profiles as ``test_generated.py`` (``HYPOTHESIS_PROFILE``), fewer examples.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import netgen
from netgen import Net
from test_gates import _values
from test_generated import PROFILE, nets
from zeta_fx import gate_residuals
from zeta_fx.gates import GatesReport

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = {"ci": 60, "dev": 2000}[PROFILE]
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=PROFILE == "ci",
                    print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def check_gates(spec: Net) -> None:
    model = netgen.build(spec).eval()
    x, cond = netgen.example_inputs(spec)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = _first(model(x, cond))

    one = gate_residuals(model, init=1.0, leaf_modules=netgen.leaves_in(model),
                         graph=True).eval()
    with torch.no_grad():  # bit for bit, NaN where the model itself makes one (0 / 0)
        torch.testing.assert_close(_first(one(x, cond)), expected, rtol=0, atol=0,
                                   equal_nan=True, msg="alpha = 1 changed the output")

    # A model that computes a NaN on these inputs (`x / x.norm()` of a zero row) is outside
    # the claim, for gates as for zeroing: 0 * NaN is NaN. Check alpha = 0 on the others.
    if not all(torch.isfinite(v).all() for v in _values(one, (x, cond)).values()
               if isinstance(v, torch.Tensor) and v.is_floating_point()):
        return
    zero = gate_residuals(model, init=0.0, leaf_modules=netgen.leaves_in(model),
                         graph=True).eval()
    report = GatesReport.of(zero)
    values = _values(zero, (x, cond))
    for gate in report.gates:
        merge, skip = values[gate.merge], values[gate.skip]
        assert torch.isfinite(merge).all(), f"`{gate.merge}` is not finite\n{report}"
        assert torch.equal(merge, skip), f"`{gate.merge}` != its skip `{gate.skip}`\n{report}"
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert set(state) <= set(zero.state_dict()), "an original FQN was lost"


@SETTINGS
@given(spec=nets())
def test_gates_on_generated_networks(spec: Net) -> None:
    check_gates(spec)


@SETTINGS
@given(spec=nets(hard=True))
def test_gates_on_generated_hard_networks(spec: Net) -> None:
    check_gates(spec)
