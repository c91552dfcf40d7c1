"""What ``gate_residuals`` did: one :class:`Gate` per inserted parameter, and the report.

The report
----------
``gated.meta["zeta_fx_gates"]`` (also :meth:`GatesReport.of`) is a frozen
:class:`GatesReport`: one :class:`Gate` per inserted parameter (its FQN, the merge and skip
nodes, the operands it multiplies, the branch's last layers, the rule's position, shape,
dim and init) and the candidates left alone with the rule's reasons; ``str(report)`` is a
table. ``GraphModule.meta`` is the graph module's own metadata dict: the report is data
next to the graph, not an attribute of a module, and it follows ``copy.deepcopy``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from tabulate import tabulate
from torch import fx

from zeta_fx.errors import GateError
from zeta_fx.rules.selection import Skipped
from zeta_fx.words import format_shape, plural

__all__ = ["Gate", "GatesReport", "META_KEY"]

META_KEY = "zeta_fx_gates"  # the key of the report in the returned GraphModule's ``meta``


@dataclass(frozen=True)
class Gate:
    """One inserted gate: ``merge`` now computes ``skip + name·(operands)``.

    ``name`` is the parameter's FQN in the returned module; ``merge``, ``skip`` and
    ``operands`` (the summands it multiplies) are node names of its graph; ``layers`` are
    the module FQNs of the branch's last layers, as the rule found them, and ``position``
    the rule's words for where they sit. ``dim`` is the channel dimension of a per-channel
    gate (``None`` for a scalar one).
    """

    name: str
    merge: str
    skip: str
    operands: tuple[str, ...]
    layers: tuple[str, ...]
    position: str
    shape: tuple[int, ...]
    dim: int | None
    init: float


@dataclass(frozen=True)
class GatesReport:
    """What ``gate_residuals`` inserted, and what the rule left alone (with its reasons).

    >>> from torch import nn
    >>> from zeta_fx import gate_residuals
    >>> report = gate_residuals(nn.Sequential(nn.Linear(2, 2)))
    >>> report.names, report.summary()
    ([], 'Sequential: rule residual_branch_last found nothing to gate (0 candidates left alone)')
    """

    model: str
    rule: str
    gates: tuple[Gate, ...] = ()
    skipped: tuple[Skipped, ...] = ()

    @staticmethod
    def of(gm: fx.GraphModule) -> "GatesReport":
        """The report ``gate_residuals`` stored in ``gm.meta``."""
        report = getattr(gm, "meta", {}).get(META_KEY)
        if not isinstance(report, GatesReport):
            raise GateError(f"{type(gm).__name__} holds no gates report (gm.meta[{META_KEY!r}]); "
                            "it is set on the GraphModule that gate_residuals returns")
        return report

    @property
    def names(self) -> list[str]:
        """FQNs of the inserted parameters (an optimizer group of their own, say)."""
        return [g.name for g in self.gates]

    @property
    def elements(self) -> int:
        return sum(math.prod(g.shape) for g in self.gates)

    def summary(self) -> str:
        left_alone = f"{plural(len(self.skipped), 'candidate')} left alone"
        if not self.gates:
            return f"{self.model}: rule {self.rule} found nothing to gate ({left_alone})"
        return (f"{self.model}: rule {self.rule} gated {plural(len(self.gates), 'residual join')} "
                f"with {plural(self.elements, 'new parameter element')}; {left_alone}")

    def table(self, tablefmt: str = "simple") -> str:
        parts = []
        if self.gates:
            rows = [[g.name, format_shape(g.shape) + ("" if g.dim is None else f" (dim {g.dim})"),
                     f"{g.init:g}", g.merge, g.skip, ", ".join(g.layers) or "-", g.position]
                    for g in self.gates]
            parts.append(tabulate(rows, headers=["gate", "shape", "init", "merge", "skip",
                                                 "branch last layers", "position"],
                                  tablefmt=tablefmt, disable_numparse=True))
        parts.append(self.summary())
        if self.skipped:
            parts.append("left alone:")
            parts.append(tabulate([[s.node, s.module or "-", s.reason] for s in self.skipped],
                                  headers=["node", "module", "reason"], tablefmt=tablefmt,
                                  disable_numparse=True))
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (lists, strings and numbers)."""
        return {"model": self.model, "rule": self.rule,
                "gates": [{k: list(v) if isinstance(v, tuple) else v
                           for k, v in asdict(g).items()} for g in self.gates],
                "skipped": [asdict(s) for s in self.skipped]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        return self.table()

    def __format__(self, spec: str) -> str:
        return self.table(spec or "simple")
