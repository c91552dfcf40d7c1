"""Apply: a plan written on a model, atomically.

Takes a :class:`~zeta_fx.plan.Plan` and a model (the one analysed, or another instance:
materialised, wrapped, sharded); resolves and validates every target (existence, ties,
lazy, parametrizations, hooks, inference tensors, dtypes) before the first write; on
request checks every claim on a forward pass with the planned values substituted
(:mod:`~zeta_fx.apply.verify`); then writes in place under ``torch.no_grad()``. Hands on an
:class:`Outcome` for the report. A dry run writes nothing.
"""

from zeta_fx.apply.verify import SiteCheck, graph_args
from zeta_fx.apply.write import InitSite, Outcome, apply_plan, resolve

__all__ = ["apply_plan", "resolve", "Outcome", "InitSite", "SiteCheck", "graph_args"]
