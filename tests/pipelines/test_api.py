"""The verbs (``zeta_fx.api``): ``zero_init_pass`` and ``ZeroInitPass``, the FX pass.

What each stage does has its own file (``test_capture.py``, ``test_analysis.py``,
``test_facts.py``, ``test_rules.py``, ``test_plan.py``, ``test_apply.py``,
``test_verify.py``, ``test_report.py``); ``init_pass`` and its initialisers are in
``test_inits.py``, the errors users meet in ``test_bad_inputs.py``.
"""

import logging

from torch import fx
from torch.fx.passes.infra.pass_base import PassResult

from zeta_fx import ZeroInitPass, zero_init_pass


def test_fx_pass_modified_only_when_values_change(small_resnet):
    model = small_resnet()
    gm = fx.symbolic_trace(model)
    zero_pass = ZeroInitPass(rule="residual_branch_last")
    first = zero_pass(gm)
    assert isinstance(first, PassResult) and first.modified and first.graph_module is gm
    assert zero_pass.report.modules == ["blocks.0.bn3", "blocks.1.bn3"]
    # gm shares the model's parameters: the caller's own weights are the ones zeroed
    assert not model.blocks[0].bn3.weight.any()
    second = zero_pass(gm)
    assert not second.modified and second.graph_module is gm


def test_logging_not_printing(caplog, capsys, small_resnet):
    with caplog.at_level(logging.INFO, logger="zeta_fx"):
        zero_init_pass(small_resnet())
    assert capsys.readouterr().out == ""
    assert any("wrote 4 parameters in 2 modules" in r.message for r in caplog.records)

