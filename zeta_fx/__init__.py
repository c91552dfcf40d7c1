"""zeta_fx: initialise deep networks by graph position.

Trace a model, find the layers at a graph position (the last layer of each residual branch,
the output layer, the adaLN modulation of each block), prove that zeroing them makes each
residual block the identity, zero them, and report every node touched and every candidate
left alone, with the reason.

>>> import torch
>>> from zeta_fx import zero_init_pass
>>> from zeta_fx.models import GPT
>>> model = GPT(n_layer=2)
>>> report = zero_init_pass(model, rule="residual_branch_last")
>>> report.modules
['h.0.attn.c_proj', 'h.0.mlp.c_proj', 'h.1.attn.c_proj', 'h.1.mlp.c_proj']
>>> site = report.plan.entries[0].sites[0]
>>> site.kind, site.claim
('residual', '`add_1` equals its skip `drop`')
>>> print(report.summary())
GPT: rule residual_branch_last zeroed 8 parameters in 4 modules, 10,368 of 30,592 elements (33.89%); 0 candidates left alone

The flow goes one way: capture (:mod:`zeta_fx.capture`) → analysis (:mod:`zeta_fx.analysis`,
:mod:`zeta_fx.analysis.facts`, :mod:`zeta_fx.analysis.joins`) → rule (:mod:`zeta_fx.rules`) → proof
(:mod:`zeta_fx.analysis.proof`) → planner (:mod:`zeta_fx.plan.planner`) → plan (:mod:`zeta_fx.plan`, plain
data) → apply (:mod:`zeta_fx.apply`) → report (:mod:`zeta_fx.report`).
"""

import warnings as _warnings

# Without numpy installed (it is not a dependency), `import torch` warns "Failed to
# initialize NumPy" and every `zeta-fx` command printed it: the CLI never reaches numpy, and
# both `zeta-fx` and `python -m zeta_fx` import this package before any code of theirs
# runs, so the one warning is filtered here, around the import only. A program that
# imported torch itself has seen torch's warning already; nothing else is hidden.
with _warnings.catch_warnings():
    _warnings.filterwarnings("ignore", message="Failed to initialize NumPy",
                             category=UserWarning)
    import torch  # noqa: F401

from zeta_fx import inits, rules
from zeta_fx.api import ZeroInitPass, init_pass, zero_init_pass
from zeta_fx.errors import (CaptureError, NotAModuleError, NoWeightError, PlanError,
                            PlanFormatError, PlanMismatchError, RenderError, TiedParameterError,
                            UnknownRuleError, UnsupportedParameterError, ZetaFxError)
from zeta_fx.errors import (ExampleInputsError, PartialWriteError, UnsupportedWrapperError,
                            VerificationError)
from zeta_fx.errors import GateError, ModuleStateWriteError
from zeta_fx.gates import GatesReport, gate_residuals
from zeta_fx.api import ZeroInitPlan
from zeta_fx.report import ZeroInitReport
from zeta_fx.snapshot import Snapshot
from zeta_fx.utils import exists, init_zero_

__version__ = "0.1.0"

__all__ = [
    "zero_init_pass", "init_pass", "ZeroInitPass", "ZeroInitPlan", "ZeroInitReport",
    "inits", "rules", "init_zero_", "exists", "ZetaFxError", "CaptureError",
    "NotAModuleError", "NoWeightError", "PlanError", "PlanFormatError", "PlanMismatchError",
    "TiedParameterError", "UnknownRuleError", "UnsupportedParameterError",
    "UnsupportedWrapperError", "VerificationError", "PartialWriteError", "ExampleInputsError", "RenderError",
    "gate_residuals", "GatesReport", "GateError", "ModuleStateWriteError", "Snapshot",
]
