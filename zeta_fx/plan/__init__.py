"""Plan: a rule's selection becomes a plan, plain data addressed by FQN.

Takes the settled :class:`~zeta_fx.rules.Selection`, the view (for owners and shapes) and an
initialiser (:mod:`zeta_fx.inits`); hands on a :class:`Plan`: per module, the parameters to
write, the action, and the graph sites that justify it. A plan holds nothing live,
serialises to JSON, and applies to another instance of the same architecture.
:mod:`~zeta_fx.plan.records` is the leaf: it imports nothing from apply or report
(:class:`zeta_fx.ZeroInitPlan` adds the verb ``apply`` on top of it).
"""

from zeta_fx.plan.planner import Branches, build_plan
from zeta_fx.plan.records import (ACTION_KINDS, PLAN_FORMAT, PLAN_VERSION, ZERO, Action, Plan,
                                  PlanEntry, check_seed, seed_problem)

__all__ = ["Plan", "PlanEntry", "Action", "ZERO", "PLAN_FORMAT", "PLAN_VERSION", "ACTION_KINDS",
           "check_seed", "seed_problem", "build_plan", "Branches"]
