"""Plans: what to initialise, by FQN, as plain data. Made by the planner, applied by apply.

A plan names, for each module, the parameters to write, the graph sites that make them a
target (:class:`~zeta_fx.selection.Site`) and the action (:class:`Action`: zero, a normal
draw with its figures, or a callable). It holds nothing live, serialises to JSON, and
applies to another instance of the same architecture: materialised, wrapped in
``DistributedDataParallel``, or sharded with FSDP2.

>>> import torch
>>> from torch import nn
>>> from zeta_fx import zero_init_pass
>>> from zeta_fx.plan import ZeroInitPlan
>>> def make():
...     return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
>>> plan = zero_init_pass(make(), rule="output_layer", dry_run=True).plan
>>> again = ZeroInitPlan.from_json(plan.to_json())
>>> again == plan
True
>>> other = make()
>>> again.apply(other).params
['2.weight', '2.bias']
>>> bool(other[2].weight.any())
False
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from zeta_fx.apply import apply_plan
from zeta_fx.errors import PlanFormatError
from zeta_fx.report import ZeroInitReport
from zeta_fx.selection import Site, Skipped

__all__ = ["Action", "ZERO", "PlanEntry", "ZeroInitPlan", "PLAN_FORMAT", "PLAN_VERSION"]

PLAN_FORMAT = "zeta_fx.plan"
PLAN_VERSION = 2  # 2: sites as data, actions, seed, skipped; version 1 is still read


@dataclass(frozen=True)
class Action:
    """What to write into an entry's parameters.

    ``kind`` is ``"zero"``, ``"normal"`` (a draw from ``N(mean, std)``, reproducible from the
    plan's seed and the parameter's FQN) or ``"callable"`` (a user function, named ``name``,
    passed again when a loaded plan is applied). ``label`` is how the report shows it
    (``N(0, 0.0029)``); ``figures`` the numbers that produced it (``(("L", 24), ...)``).
    """

    kind: str = "zero"
    std: float = 0.0
    mean: float = 0.0
    name: str = ""
    label: str = "zero"
    figures: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "std": self.std, "mean": self.mean, "name": self.name,
                "label": self.label, "figures": [[k, v] for k, v in self.figures]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Action":
        kind = _text(data["kind"])
        if kind not in ("zero", "normal", "callable"):
            raise ValueError(f"unknown action kind {kind!r}")
        figures = tuple((_text(k), _figure(v)) for k, v in data.get("figures", ()))
        return cls(kind, _number(data.get("std", 0.0)), _number(data.get("mean", 0.0)),
                   _text(data.get("name", "")), _text(data.get("label", kind)), figures)


ZERO = Action()


@dataclass(frozen=True)
class PlanEntry:
    """One module whose parameters ``params`` (FQN -> shape) get ``action``, at ``sites``."""

    module: str
    module_type: str
    params: dict[str, tuple[int, ...]]
    sites: tuple[Site, ...]
    rule: str
    action: Action = ZERO

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(s.node for s in self.sites)

    @property
    def positions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.position for s in self.sites))

    @property
    def zero_at(self) -> tuple[str, ...]:
        return tuple(s.zero_at for s in self.sites)

    @property
    def merges(self) -> tuple[str, ...]:
        return tuple(s.merge for s in self.sites)

    @property
    def skips(self) -> tuple[str, ...]:
        return tuple(s.skip for s in self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "module_type": self.module_type,
                "params": {k: list(v) for k, v in self.params.items()},
                "sites": [s.to_dict() for s in self.sites], "rule": self.rule,
                "action": self.action.to_dict()}

    @classmethod
    def from_dict(cls, e: dict[str, Any]) -> "PlanEntry":
        params = {_text(k): tuple(_dim(d) for d in v) for k, v in e["params"].items()}
        if "sites" in e:
            sites = tuple(Site.from_dict(s) for s in e["sites"])
        else:  # version 1: parallel lists
            nodes = [_text(n) for n in e["nodes"]]
            positions = [_text(p) for p in e["positions"]]

            def at(key: str, i: int) -> str:
                values = e.get(key, ())
                return _text(values[i]) if i < len(values) else ""
            sites = tuple(Site("residual" if at("merges", i) else "module", node,
                               at("merges", i), at("skips", i), zero_at=at("zero_at", i),
                               position=positions[min(i, len(positions) - 1)]
                               if positions else "")
                          for i, node in enumerate(nodes))
        action = Action.from_dict(e["action"]) if "action" in e else ZERO
        return cls(_text(e["module"]), _text(e["module_type"]), params, sites,
                   _text(e["rule"]), action)


@dataclass(frozen=True)
class ZeroInitPlan:
    """What would be written, by FQN; :meth:`apply` writes it on any instance of the model.

    ``seed`` makes every ``normal`` action reproducible (one process or FSDP2 shards:
    each tensor is drawn whole from a generator seeded by ``seed`` and its FQN).
    ``init`` names the initialiser that made the actions (``"zero"`` for
    :func:`~zeta_fx.zero_init_pass`).
    """

    entries: tuple[PlanEntry, ...]
    rule: str
    model: str
    skipped: tuple[Skipped, ...] = ()
    init: str = "zero"
    seed: int | None = None

    @property
    def modules(self) -> list[str]:
        return [e.module for e in self.entries]

    @property
    def params(self) -> list[str]:
        return [fqn for e in self.entries for fqn in e.params]

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "rule": self.rule,
                "model": self.model, "init": self.init, "seed": self.seed,
                "entries": [e.to_dict() for e in self.entries],
                "skipped": [s.to_dict() for s in self.skipped]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "ZeroInitPlan":
        """Read a plan written by :meth:`to_json`; a corrupted text raises ``PlanFormatError``.

        Non-finite numbers (``Infinity``, ``NaN``, ``1e999``), shapes that are not
        non-negative integers, and pathologically deep nesting are refused as corrupted.

        >>> ZeroInitPlan.from_json('{"format": "zeta_fx.plan", "version": Infinity}')
        Traceback (most recent call last):
        ...
        zeta_fx.errors.PlanFormatError: the plan is not valid JSON (Infinity is not a number ...
        """
        try:
            data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
        except RecursionError:
            raise PlanFormatError("the plan's JSON is nested too deeply to be a zeta_fx plan; "
                                  "write plans with ZeroInitPlan.to_json() and load them "
                                  "unchanged") from None
        except (TypeError, ValueError) as exc:
            raise PlanFormatError(f"the plan is not valid JSON ({exc}); write plans with "
                                  "ZeroInitPlan.to_json() and load them unchanged") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> "ZeroInitPlan":
        """Read a plan from :meth:`to_dict`'s plain data; malformed data raises
        ``PlanFormatError``."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise PlanFormatError(f"not a zeta_fx plan: expected a JSON object with "
                                  f"\"format\": \"{PLAN_FORMAT}\"")
        if data.get("version") not in (1, PLAN_VERSION):
            raise PlanFormatError(f"plan version {data.get('version')!r} is not supported "
                                  f"(this zeta_fx reads versions 1 and {PLAN_VERSION}); make "
                                  "the plan again with this version")
        try:
            entries = tuple(PlanEntry.from_dict(e) for e in data["entries"])
            skipped = tuple(Skipped.from_dict(s) for s in data.get("skipped", ()))
            seed = data.get("seed")
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
                raise TypeError(f"seed must be an integer or null, got {seed!r}")
            return cls(entries, _text(data["rule"]), _text(data["model"]), skipped,
                       _text(data.get("init", "zero")), seed)
        except RecursionError:
            raise PlanFormatError("the plan's entries are nested too deeply; make the plan "
                                  "again") from None
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise PlanFormatError(f"the plan's entries are malformed ({type(exc).__name__}: "
                                  f"{exc}); make the plan again") from None

    def apply(self, model: nn.Module, *, allow_tied: bool = False,
              init: Callable[..., Any] | None = None) -> ZeroInitReport:
        """Write every planned parameter of ``model`` in place and return the report.

        All targets are resolved and validated first; if any is missing, has another shape,
        or cannot be written in place, an error lists every problem and nothing is written.
        ``init`` is the callable a plan made with ``init=callable`` names (a loaded plan
        does not hold the function itself).
        """
        return ZeroInitReport(self, apply_plan(self, model, allow_tied=allow_tied, init=init))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a plan can hold")


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is not a finite number")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _dim(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"a shape holds non-negative integers, got {value!r}")
    return value


def _number(value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _figure(value: Any) -> Any:
    if isinstance(value, str):
        return value
    return _number(value) if isinstance(value, float) else _dim(value)
