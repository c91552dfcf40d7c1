"""Zero facts: what each value is (zero, finite, partly zero, unknown) once a set of
parameters is zero. A forward abstract interpretation over the graph, on the lattice and
transfer functions of :mod:`zeta_fx.semantics`; this package is the sweep that drives them.
"""

from zeta_fx.analysis.facts.sweep import (Fact, ZeroFacts, join, makes_zeros, product, total,
                                          zero_inputs_needed)

__all__ = ["Fact", "ZeroFacts", "makes_zeros", "join", "product", "total",
           "zero_inputs_needed"]
