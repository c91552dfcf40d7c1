"""Analysis: read-only facts about a captured graph, built once per pass.

Takes the ``GraphModule`` and the model it came from; hands the rules a
:class:`GraphView`: the value-flow index (which values are data, which nodes are layers and
who owns their parameters), the storages values live in and what writes them
(:mod:`~zeta_fx.analysis.storage`), each value's dtype (:mod:`~zeta_fx.analysis.dtypes`),
the zero facts given the parameters to zero (:mod:`~zeta_fx.analysis.facts`), the residual
joins (:mod:`~zeta_fx.analysis.joins`), and the proof that settles a rule's selection
(:mod:`~zeta_fx.analysis.proof`). Nothing here changes the graph or the model.
"""

from zeta_fx.analysis.facts import Fact, ZeroFacts
from zeta_fx.analysis.joins import Join
from zeta_fx.analysis.proof import settle
from zeta_fx.analysis.storage import Storages
from zeta_fx.analysis.view import Blocked, Found, GraphView, Layer, owner_of

__all__ = ["GraphView", "Layer", "Join", "Found", "Blocked", "owner_of", "Fact", "ZeroFacts",
           "Storages", "settle"]
