"""Exception classes. Every error says what was wrong, where, and what to do."""

from __future__ import annotations


class ZetaFxError(Exception):
    """Base class of every error raised by zeta_fx."""


class NotAModuleError(ZetaFxError, TypeError):
    """The object given to the pass is not an ``nn.Module`` or ``GraphModule``."""


class CaptureError(ZetaFxError):
    """The model could not be turned into an FX graph."""


class ModuleStateWriteError(CaptureError):
    """Symbolic tracing reached a ``forward`` that assigns module state (``self.steps += 1``,
    ``self.ema = ...``): tracing it would store a ``torch.fx.Proxy`` in the module. The
    assignment was refused before it happened; the module is as it was. ``module`` is the
    FQN of the module assigned to (``""`` for the root), ``attribute`` the name."""

    def __init__(self, message: str, module: str = "", attribute: str = "") -> None:
        super().__init__(message)
        self.module = module
        self.attribute = attribute


class UnknownRuleError(ZetaFxError, KeyError):
    """A rule was asked for by a name the registry does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NoWeightError(ZetaFxError, TypeError):
    """``init_zero_`` was given a module that has no ``weight`` to zero."""


class PlanError(ZetaFxError):
    """A plan does not fit the model it is applied to, or cannot be read."""


class PlanMismatchError(PlanError):
    """A plan names parameters the model lacks, or with other shapes."""


class PlanFormatError(PlanError, ValueError):
    """A plan's JSON text is corrupted or of an unknown version."""


class UnsupportedParameterError(ZetaFxError):
    """A target parameter cannot be zeroed in place (lazy, inference tensor, parametrized)."""


class TiedParameterError(ZetaFxError):
    """A target parameter is shared with a module the rule did not select."""


class PartialWriteError(ZetaFxError):
    """Writing a plan failed part-way: some tensors were zeroed, the rest were not.

    Zeroing is idempotent, so applying the same plan again (once the cause is fixed)
    completes it. ``written`` and ``unwritten`` list the parameter FQNs.
    """

    def __init__(self, message: str, written: list[str] | None = None,
                 unwritten: list[str] | None = None) -> None:
        super().__init__(message)
        self.written = list(written or [])
        self.unwritten = list(unwritten or [])


class UnsupportedWrapperError(ZetaFxError, TypeError):
    """The model is wrapped in a way the pass cannot trace or write through (FSDP1, FSDP2)."""


class VerificationError(ZetaFxError):
    """``verify=True``: a claim did not hold on the example inputs (a merge did not equal its
    skip value, or a value promised to be zero was not).

    The check runs with the zeroed values substituted, before anything is written: when this
    is raised, the model has not been changed.
    """


class ExampleInputsError(ZetaFxError, ValueError):
    """``verify=True`` without example inputs, or on a model whose values cannot be run."""


class RenderError(ZetaFxError):
    """A picture of the graph cannot be made or rendered (no graph kept, Graphviz failed)."""


class GateError(ZetaFxError, ValueError):
    """``gate_residuals`` was given an option it cannot apply (an ``init`` that is not a
    finite number, a per-channel dimension the merge does not have), or a module without a
    gates report was asked for one. Nothing was changed."""


class UnknownModuleError(ZetaFxError, ValueError):
    """A module FQN or class given to scope the pass (``leaf_modules=``, ``within=``, the
    command line's ``--leaf``/``--focus``) matches no module of the model; the message lists
    the nearest names. Nothing was traced or written."""
