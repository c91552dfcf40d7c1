"""adaLN-Zero (DiT): the conditioning layers that scale or gate the data path, the gates of
its residual branches, and the output layer."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch.fx import Node

from zeta_fx.analysis.view import Blocked, GraphView, Join, owner_of
from zeta_fx.semantics.keys import op_key
from zeta_fx.semantics.tables import ADDITIVE, CARRIERS, MULTIPLY, PASS_THROUGH, SPLITS
from zeta_fx.rules.base import Rule
from zeta_fx.rules.output import OutputLayer
from zeta_fx.rules.residual import join_site, operand_cover
from zeta_fx.rules.selection import Selection, Skipped, Target

__all__ = ["AdaLNZero"]


def _op_name(node: Node) -> str:
    return op_key(node)[0] if node.op in ("call_function", "call_method") else ""


class AdaLNZero(Rule):
    """What DiT's adaLN-Zero initialisation zeroes, found from the graph.

    Every *conditioning* layer — a layer computed from some graph inputs (timestep, class
    label) whose output, chunked or not, scales or gates a value computed from another input
    (the data path) — plus the last layer before each output. On DiT that is each block's
    ``adaLN_modulation`` linear, the final layer's modulation and the final linear. A
    conditioning layer that only shifts (is only added, like a guided-diffusion ResBlock's
    timestep embedding) is left alone, and the report says so. A model with no such
    modulation (a UNet) gets nothing zeroed, not even its output layer, and one row left
    alone that says no modulation was found; compose with :class:`OutputLayer` to zero the
    output anyway.

    >>> import torch
    >>> from zeta_fx import zero_init_pass
    >>> from zeta_fx.models import DiT
    >>> zero_init_pass(DiT(depth=1), rule="adaln_zero").modules
    ['blocks.0.adaLN_modulation.1', 'final_layer.adaLN_modulation.1', 'final_layer.linear']
    """

    name = "adaln_zero"
    description = ("adaLN-Zero: conditioning layers producing shift/scale/gate of the data "
                   "path, and the output layer; nothing where no modulation is found")

    def find(self, view: GraphView) -> Selection:
        out = Selection()
        deps = view.input_deps
        # The data path starts at the first graph input that reaches an output (``x`` in
        # ``forward(x, t, y)``); a conditioning value does not depend on it.
        reach = 0
        for value in view.outputs():
            reach |= deps.get(value, 0)
        data_bit = reach & -reach

        def conditioning(n: Node) -> bool:
            return bool(deps.get(n)) and not deps[n] & data_bit

        gate_targets: list[Target] = []
        ungated: list[list[Target]] = []
        for join in view.joins():
            if join.ok and deps.get(join.merge, 0) & data_bit:
                targets, gated = self._gate_join(view, join, conditioning, out)
                if gated:
                    gate_targets += targets
                elif targets:
                    ungated.append(targets)
        if gate_targets:
            # an adaLN model: a branch with no gate (PixArt's cross-attention) is zeroed at
            # its last layer, so that each block is the identity
            for targets in ungated:
                gate_targets += targets
        stream = {j.merge for j in view.joins() if j.ok}
        gates = {b for j in view.joins() if j.ok for b in j.branches}
        for node in view.nodes:
            layer = view.layer(node)
            if layer is None or not layer.zeroable or not conditioning(node):
                continue
            sites, pieces, other = self._sites(view, node, deps[node], stream)
            if not sites:
                continue
            roles = [("gate" if site in gates else "scale") if kind == "mul" else "shift"
                     for site, kind in sites]
            source = ", ".join(f"`{n}`" for n in view.input_names(deps[node]))
            if "scale" not in roles and "gate" not in roles:
                where = ", ".join(f"`{site.name}`" for site, _ in sites[:3])
                out.skipped.append(Skipped(
                    node.name, layer.owner,
                    f"conditioning layer (from {source}) is only added to the data path at "
                    f"{where}: it shifts but never scales or gates, so adaLN-Zero leaves it "
                    "alone", self.name))
                continue
            if other is not None:
                out.skipped.append(Skipped(
                    node.name, layer.owner,
                    f"conditioning layer (from {source}) modulates the data path but its "
                    f"output also feeds `{other.name}`: zeroing it would cut that signal too",
                    self.name))
                continue
            counts = ", ".join(f"{roles.count(r)} {r}" for r in ("shift", "scale", "gate")
                               if r in roles)
            split = f", chunked into {pieces}" if pieces > 1 else ""
            out.targets.append(Target(
                layer.owner, layer.params, (node.name,),
                f"adaLN modulation from {source}: {counts} of the data path{split}", self.name,
                node.name, cover=f"adaln:{node.name}", kind="adaln", roles=tuple(roles),
                chunks=pieces))
        # the gates' own targets, where the modulation layers above do not already say it
        listed = {(t.nodes, t.params) for t in out.targets}
        out.targets += [t for t in gate_targets if (t.nodes, t.params) not in listed]
        if not out.targets:
            # not an adaLN model: zeroing its output alone is output_layer's job, not this
            # rule's, and doing it silently would hide that nothing was found
            out.skipped.append(Skipped(
                "", "", "no adaLN modulation found: no layer computed from the conditioning "
                "inputs alone scales or gates the data path, so adaln_zero zeroes nothing "
                "(to zero the output layer, use rule=\"output_layer\" or compose: "
                "AdaLNZero() | OutputLayer())", self.name))
            return out
        final = OutputLayer().select(view)
        out.targets += [dataclasses.replace(t, rule=self.name) for t in final.targets]
        out.skipped += [Skipped(s.node, s.module, s.reason, self.name) for s in final.skipped]
        return out

    def _gate_join(self, view: GraphView, join: Join, conditioning, out: Selection
                   ) -> tuple[list[Target], bool]:
        """Make residual ``join`` the identity: each branch through its gate (the
        conditioning factor it is multiplied by: zero the layers and tables that make the
        gate), or, for a branch without one (PixArt's cross-attention), its last layer."""
        sites: list[tuple[Node, tuple[str, ...]]] = []
        gated = 0
        for operand in join.branch_operands:
            gate = self._gate_of(view, operand, conditioning)
            if gate is not None:
                found = view.zero_cover(gate, conditioning)
                gated += 1
            else:
                found = operand_cover(view, join, operand)
            if isinstance(found, Blocked):
                if gated:
                    out.skipped.append(Skipped(
                        join.merge.name, "", f"gated branch into `{join.merge.name}` left "
                                             f"alone: {found.reason}", self.name))
                return [], False
            sites.extend(found.sites)
        what = "adaLN gate of the branch" if gated else "last layer of the ungated branch"
        position = f"{what} into `{join.merge.name}` from `{join.fork.name}`"
        kind = "adaln-join" if gated else "adaln-ungated"
        return [Target(owner_of(params), params, (node.name,), position, self.name,
                       cover=f"{kind}:{join.merge.name}", **join_site(view, join))
                for node, params in dict.fromkeys(sites)], bool(gated)

    @staticmethod
    def _gate_of(view: GraphView, operand: Any, conditioning) -> Node | None:
        """The conditioning factor of ``gate * f(x)`` (through casts and views), if any."""
        node = operand
        for _ in range(4):
            if not isinstance(node, Node) or node.op not in ("call_function", "call_method"):
                return None
            key = view.op_key(node)[0]
            if key in MULTIPLY:
                factors = [a for a in node.args[:2] if isinstance(a, Node) and view.is_data[a]]
                gates = [a for a in factors if conditioning(a)]
                if len(factors) == 2 and len(gates) == 1:
                    return gates[0]
                return None
            if key not in PASS_THROUGH:
                return None
            node = node.args[0] if node.args else None
        return None

    @staticmethod
    def _sites(view: GraphView, layer: Node, mask: int, stream: set[Node]
               ) -> tuple[list[tuple[Node, str]], int, Node | None]:
        """Where ``layer``'s output, carried through chunk/unsqueeze/casts, meets the data
        path (a ``mul`` or ``add`` whose other operand depends on an input ``layer`` does not)."""
        deps = view.input_deps
        sites: list[tuple[Node, str]] = []
        pieces = 1
        other: Node | None = None
        seen = {layer}
        stack = [layer]
        while stack:
            value = stack.pop()
            for user in view.data_users[value]:
                if user in seen:
                    continue
                seen.add(user)
                name = _op_name(user)
                others = [n for n in view.data_inputs[user] if n is not value]
                if name in CARRIERS or (name in ADDITIVE and not others):
                    if name in SPLITS:
                        pieces = max(pieces, sum(1 for u in view.data_users[user]))
                    stack.append(user)
                    continue
                kind = "mul" if name in MULTIPLY else "add" if name in ADDITIVE else None
                if kind is None or user in stream:
                    if other is None and kind is None and user not in stream:
                        other = user  # a use that is no modulation (another embedding path)
                    continue
                if any(deps.get(o, 0) & ~mask for o in others):
                    sites.append((user, kind))
                elif other is None:
                    other = user
        return sorted(sites, key=lambda s: view.index[s[0]]), pieces, other
