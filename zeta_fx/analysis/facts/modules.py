"""The zero-facts step for a module call: what a leaf module outputs once some of its
parameters are zero, by its kind (linear and conv, norms, activations, embeddings, ...).

A mixin of :class:`~zeta_fx.analysis.facts.sweep.ZeroFacts`: the sweep calls
``self._module(node, owned)`` for every ``call_module`` node, with ``owned`` the zeroed
parameters under it. A module whose kind is unknown, or that is opaque (hooks, a patched
``forward``), gives an unknown fact with the reason.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.fx import Node

from zeta_fx.semantics.lattice import (F_, P, U, Z, Fact, constant_fact, finite, join,
                                       normalised, product, singular, total)
from zeta_fx.semantics.modules import (STEADY_KINDS, class_kind, eps_free, get_local, hooked,
                                       opaque_reason)
from zeta_fx.analysis.facts.graph import SweepGraph
from zeta_fx.semantics.subgraphs import subgraph_of
from zeta_fx.semantics.transfer import clamp_fact, threshold_fact

__all__ = ["ModuleSteps"]


class ModuleSteps:
    """The ``call_module`` step of the zero-facts sweep (see the module docstring), and the
    step into a subgraph a higher-order op runs (``torch.no_grad()`` under export)."""

    def _through_subgraph(self, node: Node, what: str) -> tuple[Fact, str] | None:
        """The fact of a higher-order op that runs a subgraph on its operands and returns
        its outputs (:data:`~zeta_fx.semantics.tables.SUBGRAPH_CALLS`): the subgraph swept
        with its placeholders holding the operands' facts; each output's fact is kept as
        an item. ``None`` where the subgraph is not a plain graph of ops on its operands
        (it reads attributes or calls modules: what those hold is not the operands')."""
        found = subgraph_of(node)
        if found is None:
            return None
        body, env = found
        if any(n.op not in ("placeholder", "call_function", "output") for n in body.graph.nodes):
            return None
        seeds = {p: self.fact_at(v, node) for p, v in env.items() if self.changed(v)}
        inner = type(self)(SweepGraph.bare(body, decompose=True), seeds=seeds)
        out = next(n for n in body.graph.nodes if n.op == "output").args[0]
        outs = out if isinstance(out, (list, tuple)) else (out,)
        facts = [inner.fact(v) for v in outs]
        self._items[node] = dict(enumerate(facts))
        fact = join(*facts) if facts else Z
        why = ""
        for v, f in zip(outs, facts):
            if f != Z:
                culprit = v if isinstance(v, Node) and inner.changed(v) else None
                why = f"{what}, read through its subgraph: " + (
                    inner.why(culprit) if culprit is not None else
                    f"an output is {f.name.lower().replace('_', ' ')}")
                break
        return fact, why

    def _leaf(self, target: str) -> tuple[nn.Module, str | None, str, bool]:
        """``(module, kind, why_not, steady)`` of the leaf module at ``target``; ``steady``:
        unowned, it maps a FINITE input to FINITE (a kind in ``STEADY_KINDS`` whose tensors
        are absent or FINITE)."""
        if self._module_of is not None:
            module = self._module_of(target)
        else:
            try:
                module = self.root.get_submodule(target)
            except AttributeError:
                module = self.gm.get_submodule(target)
        cached = self._kinds.get(target)
        if cached is None:  # known_module, its class part asked once per class
            why = opaque_reason(module) if hooked(module) else ""
            if why:
                cached = (None, why)
            else:
                cached = self._classes.get(type(module))
                if cached is None:
                    cached = self._classes[type(module)] = class_kind(type(module),
                                                                        self.declared)
            self._kinds[target] = cached
        kind = cached[0]
        steady = kind in STEADY_KINDS and not (
            (kind == "batch_norm" or kind == "layer_norm") and eps_free(module, kind))
        if steady:
            params = module._parameters
            for local in STEADY_KINDS[kind]:
                obj = params.get(local, params)  # (params itself: not a parameter)
                if obj is None or type(obj) is nn.Parameter:
                    continue  # absent or FINITE, as _param says
                if self._param(module, local, ()) not in (None, F_):
                    steady = False
                    break
        got = self._modules[target] = (module, *cached, steady)
        return got

    def _param(self, module: nn.Module, local: str, owned: Sequence[str]) -> Fact | None:
        """The fact of ``module``'s own tensor ``local`` (``None`` if it has none)."""
        params = module._parameters
        obj = params[local] if local in params else get_local(module, local)
        if obj is None:
            return None
        if local in owned:
            return Z
        if type(obj) is nn.Parameter:
            return F_  # the model's own parameters are finite (as _tensor_fact says)
        return self._tensor_fact(obj)

    def _module(self, node: Node, owned: Sequence[str]) -> None:
        target = node.target
        module, kind, why_not, _ = self._modules.get(target) or self._leaf(target)
        if node.kwargs:
            data = [a for a in node.args if isinstance(a, Node)] + \
                [v for v in node.kwargs.values() if isinstance(v, Node)]
        else:
            data = [a for a in node.args if isinstance(a, Node)]
        x = self.fact(data[0]) if data else F_
        name = f"`{node.name}` ({type(module).__name__})"
        if kind in ("linear", "conv"):
            self._affine(node, product(x, self._param(module, "weight", owned)),
                         self._param(module, "bias", owned), name)
            return
        if kind == "batch_norm":
            # in eval mode a module with running statistics uses them: -mean/std for zero
            normed = normalised(x, self.eps_in(module.eps, data[0] if data else None,
                                                "batch_norm"), module.running_mean is None,
                                 self.changed(node.args))
            w = self._param(module, "weight", owned)
            self._affine(node, product(normed, w)
                         if getattr(module, "affine", True) and w is not None else normed,
                         self._param(module, "bias", owned), name)
            return
        if kind == "preserving":
            self._set(node, x, f"{name} at `{node.name}`")
            return
        if kind is None:
            inputs = [self.fact(d) for d in data if d in self._facts]
            if not owned and all(f == F_ for f in inputs):
                self._set(node, F_)  # a changed but finite input: finite, as before
                return
            self._set(node, U, f"{name} is opaque: {why_not}; it is not known what it computes "
                               "from a value that may be zero")
            return

        def param(local: str) -> Fact | None:
            return self._param(module, local, owned)

        if kind == "declared":
            facts = [param(n) for n, _ in module.named_parameters(recurse=False)]
            if not facts:
                self._set(node, x, f"{name}")
                return
            if all(f == Z for f in facts if f is not None):
                self._set(node, Z if x != U else U)
            else:
                self._set(node, U if Z in (x,) + tuple(f for f in facts if f is not None)
                          else finite(x), f"{name}: declared zero-preserving, but not all of "
                                          "its parameters are zero")
            return
        if kind == "finite":
            self._set(node, finite(x), f"{name} maps zero to a non-zero value")
            return
        if kind == "hardtanh":
            self._set(node, *clamp_fact(x, module.min_val, module.max_val, name))
            return
        if kind == "threshold":
            self._set(node, *threshold_fact(x, module.threshold, module.value, name))
            return
        if kind == "constant_pad":
            fill = constant_fact(module.value)
            self._set(node, join(x, fill) if x != U else U, f"{name} pads with {module.value!r}")
            return
        if kind == "prelu":
            self._set(node, x, name)
            return
        if kind == "local_response_norm":
            self._set(node, x if module.k > 0 else
                      (U if self.changed(node.args) else singular(x)),
                      f"{name} divides by k + ... with k = {module.k}")
            return
        if kind == "bilinear":
            x2 = self.fact(data[1]) if len(data) > 1 else F_
            self._affine(node, product(x, x2, param("weight")), param("bias"), name)
            return
        if kind == "embedding":
            self._set(node, param("weight") or F_, f"{name}: its weight is not zero")
            return
        if kind == "mha":
            inputs = [self.fact(d) for d in data]
            out = product(join(*inputs) if U in inputs else F_, param("out_proj.weight") or F_)
            out = total(out, param("out_proj.bias") or Z)
            self._set(node, out, f"{name}: out_proj is not zeroed")
            self._items[node] = {0: out, 1: finite(join(*inputs)) if inputs else F_}
            return
        if kind == "layer_norm":
            eps = getattr(module, "eps", 1e-5)
            eps = torch.finfo(torch.float32).eps if eps is None else eps
            normed = normalised(x, self.eps_in(eps, data[0] if data else None, "layer_norm"),
                                 True,
                                 self.changed(node.args))
            w = param("weight")
            self._affine(node, product(normed, w) if w is not None else normed,
                         param("bias"), name)
            return
        if kind == "composite":
            # an opaque leaf whose hidden residual branches are known (zeta_fx.semantics.composite):
            # with them zeroed it computes its skip (its input, or norms of it)
            inputs = [self.fact(d) for d in data]
            worst = join(*inputs) if inputs else F_
            self._set(node, U if worst == U else (F_ if worst == F_ else P),
                      f"{name}: its input may be non-finite")
            return
        self._set(node, U, f"{name}: no rule for kind {kind}")

    def _affine(self, node: Node, scaled: Fact, bias: Fact | None, name: str) -> None:
        out = total(scaled, bias) if bias is not None else scaled
        why = ""
        if out != Z:
            if bias is not None and bias != Z and scaled == Z:
                why = f"{name} adds a bias that is not zeroed"
            elif scaled == U:
                why = f"{name}: its input may be non-finite, and 0 * inf is not zero"
            else:
                why = f"{name}: its weight is not zeroed"
        self._set(node, out, why)
