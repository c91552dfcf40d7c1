"""The output layer: the last zeroable layer before each graph output."""

from __future__ import annotations

from zeta_fx.analysis.view import Blocked, Found, GraphView, owner_of
from zeta_fx.analysis.facts.sweep import Fact
from zeta_fx.rules.base import Rule
from zeta_fx.rules.selection import Selection, Skipped, Target

__all__ = ["OutputLayer"]


class OutputLayer(Rule):
    """The last zeroable layer on the way to each graph output (classifier head, final conv)."""

    name = "output_layer"
    description = "last layer before each model output (classifier head, final conv, final linear)"

    def find(self, view: GraphView) -> Selection:
        out = Selection()
        outputs = view.outputs()
        for i, value in enumerate(outputs):
            result = view.zero_cover(value, lambda n: view.is_data[n] and n.op != "placeholder")
            label = f"output {i}" if len(outputs) > 1 else "the output"
            if isinstance(result, Found):
                facts = view.facts(result.params)  # the whole graph: outputs are few
                if facts[value] != Fact.ZERO:
                    result = Blocked(value, f"zeroing {', '.join(f'`{p}`' for p in result.params[:4])}"
                                            f" does not make it exactly zero: {facts.why(value)}")
            if isinstance(result, Blocked):
                layer = view.layer(result.node) if result.node in view.layer_nodes else None
                out.skipped.append(Skipped(value.name, layer.owner if layer else "",
                                           f"{label} left alone: {result.reason}", self.name))
                continue
            for node, params in result.sites:
                out.targets.append(Target(owner_of(params), params, (node.name,),
                                          f"last layer before {label} `{value.name}`", self.name,
                                          value.name, cover=f"output:{value.name}",
                                          kind="output"))
        return out
