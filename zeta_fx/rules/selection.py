"""What a rule hands on: the targets it picked and the candidates it left alone, as data.

This module imports nothing else of zeta_fx; rules produce these objects, the proof prunes
them, the planner turns them into a plan.

>>> site = Site("residual", node="fc2", merge="add", skip="x", fork="x",
...             skip_kind="identity", position="branch into `add` from `x`, skip: identity")
>>> site.claim
'`add` equals its skip `x`'
>>> Site.from_dict(site.to_dict()) == site
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Site", "Target", "Skipped", "Selection", "SITE_KINDS"]

# What a site is, and so what its claim is:
#   residual   the layer ends a residual branch: after zeroing, `merge` equals `skip`
#   composite  a branch hidden inside an opaque leaf (nn.TransformerEncoderLayer): the leaf
#              computes its skip
#   output     the last layer before a model output: `zero_at` is exactly zero
#   adaln      an adaLN modulation layer: `zero_at` (its own output) is exactly zero
#   module     picked by name, type or predicate: its own output is exactly zero
#   fixup      a layer inside a residual branch that Fixup rescales: no claim
SITE_KINDS = ("residual", "composite", "output", "adaln", "module", "fixup")


@dataclass(frozen=True)
class Site:
    """Where one target sits, as data: the report's position column is ``position``.

    ``node`` is the graph node that uses the layer's parameters. For a residual site,
    ``merge`` is the additive merge, ``skip`` its skip operand, ``fork`` where skip and
    branch part, ``skip_kind`` ``"identity"`` or ``"projection"`` (through the layers
    ``skip_modules``). ``zero_at`` names the graph value that zeroing makes exactly zero,
    where there is one. An adaLN site lists the ``roles`` its output plays on the data path
    (``"shift"``, ``"scale"``, ``"gate"``, one per use) and the ``chunks`` it is split into.
    """

    kind: str
    node: str
    merge: str = ""
    skip: str = ""
    fork: str = ""
    skip_kind: str = ""
    skip_modules: tuple[str, ...] = ()
    zero_at: str = ""
    position: str = ""
    roles: tuple[str, ...] = ()
    chunks: int = 0

    @property
    def claim(self) -> str:
        """The claim of this site in words (what ``verify=True`` checks)."""
        if self.kind == "fixup":
            return "none (rescaled, not zeroed)"
        if self.merge:
            return f"`{self.merge}` equals its skip `{self.skip}`"
        if self.kind == "composite":
            return f"`{self.node}` computes its skip"
        return f"`{self.zero_at or self.node}` is exactly zero"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "node": self.node, "merge": self.merge, "skip": self.skip,
                "fork": self.fork, "skip_kind": self.skip_kind,
                "skip_modules": list(self.skip_modules), "zero_at": self.zero_at,
                "position": self.position, "roles": list(self.roles), "chunks": self.chunks}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Site":
        return cls(_text(data["kind"]), _text(data["node"]), _text(data.get("merge", "")),
                   _text(data.get("skip", "")), _text(data.get("fork", "")),
                   _text(data.get("skip_kind", "")),
                   tuple(_text(m) for m in data.get("skip_modules", ())),
                   _text(data.get("zero_at", "")), _text(data.get("position", "")),
                   tuple(_text(r) for r in data.get("roles", ())), _count(data.get("chunks", 0)))


@dataclass(frozen=True)
class Target:
    """One layer a rule wants zeroed at one graph position.

    Targets with the same non-empty ``cover`` zero one value together (the layers that end
    one branch): the plan keeps all of them or none. ``merge``/``skip`` state a residual
    claim (after zeroing, node ``merge`` equals operand ``skip`` exactly); otherwise the
    claim is that ``zero_at`` is exactly zero. ``kind``, ``fork``, ``skip_kind`` and
    ``skip_modules`` complete the :class:`Site` the plan records.
    """

    module: str
    params: tuple[str, ...]
    nodes: tuple[str, ...]
    position: str
    rule: str
    zero_at: str = ""
    cover: str = ""
    merge: str = ""
    skip: str = ""
    kind: str = "module"
    fork: str = ""
    skip_kind: str = ""
    skip_modules: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    chunks: int = 0

    def sites(self) -> tuple[Site, ...]:
        """One :class:`Site` per graph node of this target."""
        return tuple(Site(self.kind, node, self.merge, self.skip, self.fork, self.skip_kind,
                          self.skip_modules, self.zero_at, self.position, self.roles,
                          self.chunks)
                     for node in self.nodes)


@dataclass(frozen=True)
class Skipped:
    """A candidate a rule examined and left alone, with the reason in words."""

    node: str
    module: str
    reason: str
    rule: str

    def to_dict(self) -> dict[str, str]:
        return {"node": self.node, "module": self.module, "reason": self.reason,
                "rule": self.rule}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Skipped":
        return cls(_text(data["node"]), _text(data["module"]), _text(data["reason"]),
                   _text(data["rule"]))


@dataclass
class Selection:
    """What a rule picked and what it left alone."""

    targets: list[Target] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value
