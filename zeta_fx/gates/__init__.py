"""Gates: the ReZero/SkipInit rewrite at the joins a rule finds.

Takes the user's model and a rule; hands back the same model with a learnable gate on each
branch (in the user's own module tree), or a ``GraphModule`` where a gate must sit at the
merge itself and the caller asked for one; and a :class:`GatesReport`.
"""

from zeta_fx.gates.entry import gate_residuals
from zeta_fx.gates.inplace import GateHook
from zeta_fx.gates.report import META_KEY, Gate, GatesReport

__all__ = ["gate_residuals", "Gate", "GatesReport", "GateHook", "META_KEY"]
