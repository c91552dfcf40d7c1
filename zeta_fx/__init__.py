"""zeta_fx: initialise deep networks by graph position.

    >>> from zeta_fx import zero_init_pass
    >>> report = zero_init_pass(model, rule="residual_branch_last")  # doctest: +SKIP
    >>> print(report)                                                 # doctest: +SKIP
"""

from zeta_fx import rules
from zeta_fx.api import ZeroInitPass, plan_zero_init, zero_init_pass
from zeta_fx.errors import (CaptureError, NotAModuleError, NoWeightError, PlanError,
                            PlanFormatError, PlanMismatchError, RenderError, TiedParameterError,
                            UnknownRuleError, UnsupportedParameterError, ZetaFxError)
from zeta_fx.errors import (ExampleInputsError, PartialWriteError, UnsupportedWrapperError,
                            VerificationError)
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
]
