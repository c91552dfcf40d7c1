"""Rules: what to initialise, by graph position, read from the analysis.

Each rule takes the :class:`~zeta_fx.analysis.GraphView` and hands on a
:class:`Selection`: the targets (layers to initialise, each with the graph sites that make
it one and the claim it makes) and the candidates it left alone, each with a reason. Rules
take options, compose (``|``, ``&``, ``-``) and register by name; ``get_rule`` resolves a
name, and the names users already know (``zero_init_last``, ``zero_init_residual``) are
aliases.
"""

from zeta_fx.rules.base import Difference, Intersection, Rule, Union, get_rule, rule_scopes
from zeta_fx.rules.registry import ALIASES, list_rules, register_rule
from zeta_fx.rules.residual import ResidualBranchLast
from zeta_fx.rules.output import OutputLayer
from zeta_fx.rules.adaln import AdaLNZero
from zeta_fx.rules.by_module import ByName, ByType, Where
from zeta_fx.rules.selection import Selection, Site, Skipped, Target

__all__ = ["Rule", "ResidualBranchLast", "OutputLayer", "AdaLNZero", "ByName", "ByType",
           "Where", "Union", "Intersection", "Difference", "register_rule", "get_rule",
           "list_rules", "ALIASES", "rule_scopes", "Selection", "Site", "Skipped", "Target"]

# The built-in rules, registered in one place, in the order ``zeta-fx rules`` lists them.
# Importing any zeta_fx.rules submodule runs this file first, so they are always registered.
for _rule in (ResidualBranchLast, OutputLayer, AdaLNZero):
    register_rule(_rule)
del _rule
