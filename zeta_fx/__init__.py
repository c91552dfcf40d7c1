"""zeta_fx: initialise deep networks by graph position.

    >>> from zeta_fx import zero_init_pass
    >>> report = zero_init_pass(model, rule="residual_branch_last")  # doctest: +SKIP
    >>> print(report)                                                 # doctest: +SKIP
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

from zeta_fx import rules
from zeta_fx.api import ZeroInitPass, plan_zero_init, zero_init_pass
from zeta_fx.errors import (CaptureError, NotAModuleError, NoWeightError, PlanError,
                            PlanFormatError, PlanMismatchError, RenderError, TiedParameterError,
                            UnknownRuleError, UnsupportedParameterError, ZetaFxError)
from zeta_fx.errors import (ExampleInputsError, PartialWriteError, UnsupportedWrapperError,
                            VerificationError)
from zeta_fx.errors import GateError
from zeta_fx.gates import GatesReport, gate_residuals
from zeta_fx.ops import ZeroOps
from zeta_fx.plan import ZeroInitPlan
from zeta_fx.report import ZeroInitReport
from zeta_fx.utils import exists, init_zero_

__version__ = "0.1.0"

__all__ = [
    "zero_init_pass", "plan_zero_init", "ZeroInitPass", "ZeroInitPlan", "ZeroInitReport",
    "ZeroOps", "rules", "init_zero_", "exists", "ZetaFxError", "CaptureError",
    "NotAModuleError", "NoWeightError", "PlanError", "PlanFormatError", "PlanMismatchError",
    "TiedParameterError", "UnknownRuleError", "UnsupportedParameterError",
    "UnsupportedWrapperError", "VerificationError", "PartialWriteError", "ExampleInputsError", "RenderError",
    "gate_residuals", "GatesReport", "GateError",
]
