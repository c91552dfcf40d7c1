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
from typing import Any, Sequence

from tabulate import tabulate

from zeta_fx.errors import RenderError
from zeta_fx.report.picture import DrawResult, GraphSummary, draw_dot, summarize
from zeta_fx.words import format_shape, numel, plural
from zeta_fx.analysis.view import GraphView
from zeta_fx.apply.write import Outcome
from zeta_fx.plan.records import Plan


__all__ = ["ZeroInitReport", "format_shape", "plural"]


# Under the touched table: the position column names graph nodes and modules alike.
POSITION_NOTE = ("position: `quoted` names are graph nodes (like the node column), other "
                 "names module FQNs (like the module column)")


def _kept(entry: Any) -> list[str]:
    """Parameters at the entry's position that its initialiser leaves as they are (a bias
    beside a weight drawn by ``scaled_normal``)."""
    kept = dict(entry.action.figures).get("kept", "")
    return kept.split(",") if isinstance(kept, str) and kept else []


class ZeroInitReport:
    """What one pass (or one plan application) did, made once from the plan and the outcome.

    ``modules`` and ``params`` are FQNs relative to the model passed in; ``touched`` has a
    row per graph node, each with its structured ``site``; ``skipped`` lists every candidate
    left alone, with its reason. ``str(report)`` is a table; ``report.table(tablefmt)``
    takes any tabulate format, and so does ``format(report, "github")``. A report made by
    a pass (not by ``plan.apply``) can also be drawn (:meth:`to_dot`, :meth:`draw`).

    The class is long because it is the user's whole surface of a result (properties, the
    table, JSON, the picture); each method is short and reads only the plan and outcome.
    """

    def __init__(self, plan: "Plan", outcome: "Outcome", *,
                 view: "GraphView | None" = None, notes: Sequence[str] = ()) -> None:
        self.plan = plan
        self.outcome = outcome
        # how the model was captured, where the pass chose for the user (use_cache=False)
        self.notes = list(notes)
        self._view = view
        self._summary: GraphSummary | None = None

    @property
    def skipped(self) -> list:
        return list(self.plan.skipped)

    @property
    def applied(self) -> bool:
        """Whether values were written (false for a dry run)."""
        return self.outcome.applied

    @property
    def total_params(self) -> int:
        return self.outcome.total_params

    @property
    def verification(self) -> dict[str, Any] | None:
        """``verify=True``: each row node's :class:`~zeta_fx.apply.verify.SiteCheck`; else None."""
        return self.outcome.checks

    @property
    def changed(self) -> bool:
        """Whether the pass changed a value (for a dry run: whether applying would).

        Decided exactly before anything was written: any element other than +0/-0 counts
        (1e-30 and NaN too). A dry run's answer stays what it was when the plan is applied.
        """
        return self.outcome.changed

    @property
    def modules(self) -> list[str]:
        return self.plan.modules

    @property
    def params(self) -> list[str]:
        return self.plan.params

    @property
    def elements(self) -> int:
        """Number of scalar values zeroed (each shared module counted once)."""
        return sum(numel(s) for e in self.plan.entries for s in e.params.values())

    @property
    def touched(self) -> list[dict[str, Any]]:
        """A row per (module, graph node): the claim's ``merge``/``skip`` (residual rows) or
        ``zero_at``, the structured ``site``, the action, ``kept`` (parameters at the position
        the initialiser leaves as they are, like a bias beside a drawn weight) and, after
        ``verify=True``, ``verified``."""
        rows = []
        for entry in self.plan.entries:
            elements = sum(numel(s) for s in entry.params.values())
            for site in entry.sites:
                rows.append({
                    "node": site.node, "module": entry.module or "(root)",
                    "type": entry.module_type, "position": site.position,
                    "params": {k: list(v) for k, v in entry.params.items()},
                    "elements": elements, "shared": len(entry.sites) > 1, "rule": entry.rule,
                    "zero_at": site.zero_at, "merge": site.merge, "skip": site.skip,
                    "site": site.to_dict(), "action": entry.action.label,
                    "kept": _kept(entry),
                    "verified": (self._verified(site.node) if entry.action.kind == "zero"
                                 else None),
                })
        return rows

    def _enclosing(self, node: str) -> str:
        """For a row that names no module (a merge left alone): the module whose forward
        holds the node, from the capture's ``nn_module_stack`` (``in model.layers.0``)."""
        found = self._view.by_name.get(node) if self._view is not None and node else None
        stack = found.meta.get("nn_module_stack") if found is not None else None
        if not stack:
            return "-"
        last = list(stack.values())[-1]
        path = str(last[0] if isinstance(last, tuple) else last)
        return f"in {path}" if path else "-"

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
            "init": self.plan.init,
            "skipped": [s.to_dict() for s in self.skipped],
            "notes": list(self.notes),
            "plan": self.plan.to_dict(),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @property
    def _zero_only(self) -> bool:
        if not self.plan.entries:
            return self.plan.init == "zero"
        return all(e.action.kind == "zero" for e in self.plan.entries)

    def summary(self) -> str:
        """The footer line of the table: what was (or would be) written, in totals."""
        share = 100.0 * self.elements / self.total_params if self.total_params else 0.0
        left_alone = f"{plural(len(self.skipped), 'candidate')} left alone"
        if not self.plan.entries:
            return (f"{self.plan.model}: rule {self.plan.rule} found nothing to "
                    f"{'zero' if self._zero_only else 'initialise'} ({left_alone})")
        init = "" if self.plan.init == "zero" else f" with {self.plan.init}{self._figures()}"
        counted = (f"{plural(len(self.params), 'parameter')} in "
                   f"{plural(len(self.modules), 'module')}")
        if self._zero_only and not self.changed:
            # every planned value was zero already: saying "zeroed" would claim a change
            outcome = "nothing changed" if self.applied else "applying would change nothing"
            return (f"{self.plan.model}: rule {self.plan.rule} found {counted} already zero "
                    f"({outcome}), {self.elements:,} of {self.total_params:,} elements "
                    f"({share:.2f}%); {left_alone}")
        return (f"{self.plan.model}: rule {self.plan.rule} {self.verb} {counted}{init}, "
                f"{self.elements:,} of {self.total_params:,} elements ({share:.2f}%); "
                f"{left_alone}")

    def _figures(self) -> str:
        """The figures the actions used, once each: `` (L = 24, sigma = 0.02)``."""
        seen: dict[str, Any] = {}
        for entry in self.plan.entries:
            for key, value in entry.action.figures:
                if key in ("L", "sigma") and key not in seen:
                    seen[key] = value
        return f" ({', '.join(f'{k} = {v:g}' for k, v in seen.items())})" if seen else ""

    @property
    def verb(self) -> str:
        """``"zeroed"``/``"initialised"``, or ``"would zero (dry run)"``/``"would initialise
        (dry run)"`` when nothing was written."""
        if self._zero_only:
            return "zeroed" if self.applied else "would zero (dry run)"
        return "initialised" if self.applied else "would initialise (dry run)"

    def table(self, tablefmt: str = "simple") -> str:
        """The touched rows, the summary line and the candidates left alone, as a tabulate
        table in ``tablefmt`` (any tabulate format: ``github``, ``grid``, ``latex``...)."""
        zero_only = self._zero_only
        rows = []
        for row in self.touched:
            written = ", ".join(f"{name.rsplit('.', 1)[-1]} {format_shape(tuple(shape))}"
                                for name, shape in row["params"].items())
            if not zero_only:
                written += f": {row['action']}"
                if row["kept"]:
                    written += f"; {', '.join(k.rsplit('.', 1)[-1] for k in row['kept'])} kept"
            elements = f"{row['elements']:,}" + (" (shared)" if row["shared"] else "")
            rows.append([row["node"], row["module"], row["type"], row["position"], written,
                         elements])
            if self.verification is not None:
                rows[-1].append({True: "zero", False: "FAILED", None: "-"}[row["verified"]])
        headers = ["node", "module", "type", "position",
                   "zeroed" if zero_only else "initialised", "elements"]
        if self.verification is not None:
            headers.append("verified")
        parts = []
        if rows:
            parts.append(tabulate(rows, headers=headers, tablefmt=tablefmt,
                                  disable_numparse=True))
            parts.append(POSITION_NOTE)
        parts.append(self.summary())
        parts += [f"note: {note}" for note in self.notes]
        if self.skipped:
            skipped = [[s.node, s.module or self._enclosing(s.node), s.reason]
                       for s in self.skipped]
            parts.append("left alone:")
            parts.append(tabulate(skipped, headers=["node", "module", "reason"],
                                  tablefmt=tablefmt, disable_numparse=True))
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.table()

    # -- pictures -------------------------------------------------------------------------
    def picture(self) -> GraphSummary:
        """The condensed graph behind :meth:`to_dot`, as plain data (built on first call).

        >>> from torch import nn
        >>> from zeta_fx import zero_init_pass
        >>> report = zero_init_pass(nn.Sequential(nn.Linear(2, 2)), rule="output_layer")
        >>> [(n.kind, n.module) for n in report.picture().nodes]
        [('input', ''), ('zeroed', '0'), ('output', '')]
        """
        if self._summary is None:
            if self._view is None:
                raise RenderError(
                    "this report was made by applying a plan, which holds no graph; run "
                    "zero_init_pass(model, dry_run=True) to get a report that can be drawn")
            self._summary = summarize(self._view, self.plan, self.skipped,
                                      applied=self.applied)
        return self._summary

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
             focus: str | Sequence[str] | None = None, rankdir: str = "TB") -> DrawResult:
        """Write the picture to ``path``; the format comes from the suffix (svg, png, pdf).

        Renders with the Graphviz ``dot`` program when it is installed. Otherwise the DOT
        text goes to ``path`` with a ``.dot`` suffix, and the returned
        :class:`~zeta_fx.report.picture.DrawResult` says so and gives the command to render it.
        A ``.dot`` suffix always writes the text.
        """
        return draw_dot(self.to_dot(focus=focus, rankdir=rankdir), path, format=format)

    def __format__(self, spec: str) -> str:
        return self.table(spec or "simple")

    def __repr__(self) -> str:
        return f"<ZeroInitReport {self.summary()}>"
