"""The report: what the pass touched, what it left alone and why, as a table or JSON.

>>> import torch
>>> from torch import nn
>>> from zeta_fx import zero_init_pass
>>> report = zero_init_pass(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), rule="output_layer")
>>> report.modules, report.params
(['1'], ['1.weight', '1.bias'])
>>> print(report.table("github").splitlines()[0])
| node   | module   | type   | position                          | zeroed             | elements   |
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tabulate import tabulate

from zeta_fx.errors import RenderError

if TYPE_CHECKING:
    from zeta_fx.picture import DrawResult, GraphSummary
    from zeta_fx.plan import ZeroInitPlan
    from zeta_fx.rules import Skipped

__all__ = ["ZeroInitReport", "format_shape", "plural"]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def format_shape(shape: Sequence[int]) -> str:
    """A parameter shape as the table shows it: ``(64, 3, 7, 7)`` -> ``64x3x7x7``.

    >>> format_shape((64, 3, 7, 7)), format_shape((16,)), format_shape(())
    ('64x3x7x7', '16', 'scalar')
    """
    return "x".join(str(d) for d in shape) if shape else "scalar"


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, the noun in the plural unless the count is one.

    >>> plural(1, "module"), plural(0, "candidate"), plural(1_000, "parameter")
    ('1 module', '0 candidates', '1,000 parameters')
    """
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


# Under the touched table: the position column names graph nodes and modules alike.
POSITION_NOTE = ("position: `quoted` names are graph nodes (like the node column), other "
                 "names module FQNs (like the module column)")


class ZeroInitReport:
    """What one pass (or one plan application) did.

    ``modules`` and ``params`` are FQNs relative to the model passed in; ``touched`` has a
    row per graph node; ``skipped`` lists every candidate left alone, with its reason.
    ``str(report)`` is a table; ``report.table(tablefmt)`` takes any tabulate format, and so
    does ``format(report, "github")``.
    """

    def __init__(self, plan: "ZeroInitPlan", skipped: list["Skipped"], *, applied: bool,
                 changed: bool, total_params: int,
                 tablefmt: str = "simple") -> None:
        self.plan = plan
        self.skipped = skipped
        self.applied = applied
        if not isinstance(changed, bool):  # decided before any write, never later
            raise TypeError(f"changed must be a bool decided before writing, got "
                            f"{type(changed).__name__}")
        self._changed = changed
        self.total_params = total_params
        self.tablefmt = tablefmt
        # node -> zeta_fx.verify.SiteCheck (all of that node's claims), set by verify=True
        self.verification: dict[str, Any] | None = None

    @property
    def changed(self) -> bool:
        """Whether the pass changed a value (for a dry run: whether applying would).

        Decided exactly before anything was written: any element other than +0/-0 counts
        (1e-30 and NaN too). A dry run's answer stays what it was when the plan is applied.
        """
        return self._changed

    @property
    def modules(self) -> list[str]:
        return self.plan.modules

    @property
    def params(self) -> list[str]:
        return self.plan.params

    @property
    def elements(self) -> int:
        """Number of scalar values zeroed (each shared module counted once)."""
        return sum(_numel(s) for e in self.plan.entries for s in e.params.values())

    @property
    def touched(self) -> list[dict[str, Any]]:
        rows = []
        for entry in self.plan.entries:
            elements = sum(_numel(s) for s in entry.params.values())
            for i, node in enumerate(entry.nodes):
                position = entry.positions[min(i, len(entry.positions) - 1)]
                rows.append({
                    "node": node, "module": entry.module or "(root)",
                    "type": entry.module_type, "position": position,
                    "params": {k: list(v) for k, v in entry.params.items()},
                    "elements": elements, "shared": len(entry.nodes) > 1, "rule": entry.rule,
                    "zero_at": entry.zero_at[i] if i < len(entry.zero_at) else "",
                    "merge": entry.merges[i] if i < len(entry.merges) else "",
                    "skip": entry.skips[i] if i < len(entry.skips) else "",
                    "verified": self._verified(node),
                })
        return rows

    def _verified(self, node: str) -> bool | None:
        """True/False once ``verify=True`` checked the node's zeroed value; None if unchecked."""
        if self.verification is None or node not in self.verification:
            return None
        return bool(self.verification[node].ok)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (what ``to_json`` writes).

        ``changed`` says whether this run changed a value, so it is false for a dry run;
        there ``would_change`` says whether applying the plan would (``None`` once applied).
        ``dry_run`` is ``not applied``. The Python attribute :attr:`changed` keeps meaning
        "changed, or for a dry run: would change".

        >>> from torch import nn
        >>> from zeta_fx import zero_init_pass
        >>> data = zero_init_pass(nn.Sequential(nn.Linear(2, 2)), rule="output_layer",
        ...                       dry_run=True).to_dict()
        >>> data["dry_run"], data["changed"], data["would_change"]
        (True, False, True)
        """
        return {
            "rule": self.plan.rule, "model": self.plan.model, "applied": self.applied,
            "dry_run": not self.applied,
            "changed": self.changed if self.applied else False,
            "would_change": None if self.applied else self.changed,
            "modules": self.modules, "params": self.params,
            "elements": self.elements, "total_params": self.total_params,
            "touched": self.touched,
            "skipped": [{"node": s.node, "module": s.module, "reason": s.reason,
                         "rule": s.rule} for s in self.skipped],
            "plan": self.plan.to_dict(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def summary(self) -> str:
        """The footer line of the table: what was (or would be) zeroed, in totals."""
        share = 100.0 * self.elements / self.total_params if self.total_params else 0.0
        left_alone = f"{plural(len(self.skipped), 'candidate')} left alone"
        if not self.plan.entries:
            return (f"{self.plan.model}: rule {self.plan.rule} found nothing to zero "
                    f"({left_alone})")
        return (f"{self.plan.model}: rule {self.plan.rule} {self.verb} "
                f"{plural(len(self.params), 'parameter')} in "
                f"{plural(len(self.modules), 'module')}, {self.elements:,} of "
                f"{self.total_params:,} elements ({share:.2f}%); {left_alone}")

    @property
    def verb(self) -> str:
        """``"zeroed"``, or ``"would zero (dry run)"`` when nothing was written."""
        return "zeroed" if self.applied else "would zero (dry run)"

    def table(self, tablefmt: str | None = None) -> str:
        fmt = tablefmt or self.tablefmt
        rows = []
        for row in self.touched:
            zeroed = ", ".join(f"{name.rsplit('.', 1)[-1]} {format_shape(tuple(shape))}"
                               for name, shape in row["params"].items())
            elements = f"{row['elements']:,}" + (" (shared)" if row["shared"] else "")
            rows.append([row["node"], row["module"], row["type"], row["position"], zeroed,
                         elements])
            if self.verification is not None:
                rows[-1].append({True: "zero", False: "FAILED", None: "-"}[row["verified"]])
        headers = ["node", "module", "type", "position", "zeroed", "elements"]
        if self.verification is not None:
            headers.append("verified")
        parts = []
        if rows:
            parts.append(tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True))
            parts.append(POSITION_NOTE)
        parts.append(self.summary())
        if self.skipped:
            skipped = [[s.node, s.module or "-", s.reason] for s in self.skipped]
            parts.append("left alone:")
            parts.append(tabulate(skipped, headers=["node", "module", "reason"], tablefmt=fmt,
                                  disable_numparse=True))
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.table()

    # -- pictures -------------------------------------------------------------------------
    def picture(self) -> "GraphSummary":
        """The condensed graph behind :meth:`to_dot`, as plain data (built on first call).

        >>> from torch import nn
        >>> from zeta_fx import zero_init_pass
        >>> report = zero_init_pass(nn.Sequential(nn.Linear(2, 2)), rule="output_layer")
        >>> [(n.kind, n.module) for n in report.picture().nodes]
        [('input', ''), ('zeroed', '0'), ('output', '')]
        """
        cached = getattr(self, "_picture", None)
        if cached is None:
            source = self.plan.picture
            if source is None:
                raise RenderError(
                    "this report's plan holds no graph (it was loaded with "
                    "ZeroInitPlan.from_json); run zero_init_pass(model, dry_run=True) to get "
                    "a report that can be drawn")
            cached = self._picture = source.summary(self.plan, self.skipped,
                                                     applied=self.applied)
        return cached

    def to_dot(self, *, focus: str | Sequence[str] | None = None, rankdir: str = "TB",
               legend: bool = True) -> str:
        """Graphviz DOT of the analysed graph, condensed to what the pass looked at.

        Zeroed layers (red), residual joins (green ``+``), other additive merges (grey
        ``+``), skip paths (blue, dashed), candidates left alone (orange, with a note giving
        the reason) and a legend; runs of plain operations inside a residual block are one
        box. ``focus="layer1"`` draws only the boxes under that module prefix and their
        neighbours.

        >>> from torch import nn
        >>> from zeta_fx import zero_init_pass
        >>> report = zero_init_pass(nn.Sequential(nn.Linear(2, 2)), rule="output_layer")
        >>> 'class="zeroed"' in report.to_dot()
        True
        """
        return self.picture().to_dot(focus=focus, rankdir=rankdir, legend=legend)

    def draw(self, path: str | Path, *, format: str | None = None,
             focus: str | Sequence[str] | None = None, rankdir: str = "TB") -> "DrawResult":
        """Write the picture to ``path``; the format comes from the suffix (svg, png, pdf).

        Renders with the Graphviz ``dot`` program when it is installed. Otherwise the DOT
        text goes to ``path`` with a ``.dot`` suffix, and the returned
        :class:`~zeta_fx.picture.DrawResult` says so and gives the command to render it.
        A ``.dot`` suffix always writes the text.
        """
        from zeta_fx.picture import draw_dot

        return draw_dot(self.to_dot(focus=focus, rankdir=rankdir), path, format=format)

    def __format__(self, spec: str) -> str:
        return self.table(spec or None)

    def __repr__(self) -> str:
        return f"<ZeroInitReport {self.summary()}>"
