"""Plan records: what to initialise, by FQN, as plain data. Made by the planner, written
by apply; this module imports nothing from either.

A plan names, for each module, the parameters to write, the graph sites that make them a
target (:class:`~zeta_fx.rules.selection.Site`) and the action (:class:`Action`: zero, a
normal draw with its figures, or a callable). It holds nothing live, serialises to JSON,
and applies to another instance of the same architecture: materialised, wrapped in
``DistributedDataParallel``, or sharded with FSDP2. The public class,
:class:`zeta_fx.ZeroInitPlan`, is :class:`Plan` with the verb ``apply``.

>>> plan = Plan((PlanEntry("fc", "Linear", {"fc.weight": (2, 2)}, (), "output_layer"),),
...             "output_layer", "Net")
>>> Plan.from_json(plan.to_json()) == plan
True
>>> plan.params
['fc.weight']
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable


from zeta_fx.errors import PlanError, PlanFormatError
from zeta_fx.rules.selection import Site, Skipped

__all__ = ["Action", "ZERO", "PlanEntry", "Plan", "PLAN_FORMAT", "PLAN_VERSION",
           "ACTION_KINDS", "check_seed", "seed_problem"]

PLAN_FORMAT = "zeta_fx.plan"
PLAN_VERSION = 2  # 2: sites as data, actions, seed, skipped; version 1 is still read
ACTION_KINDS = ("zero", "normal", "callable")


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
        """Read an action from :meth:`to_dict`'s data; a bad field raises ``ValueError`` or
        ``TypeError`` naming it (``field `std`: ...``)."""
        kind = _read(data, "kind", _text)
        figures = _read(data, "figures", _each(lambda pair: (_text(pair[0]), _figure(pair[1]))
                                               if isinstance(pair, list) and len(pair) == 2
                                               else _pair_error(pair)), ())
        return cls(kind, _read(data, "std", _number, 0.0), _read(data, "mean", _number, 0.0),
                   _read(data, "name", _text, ""), _read(data, "label", _text, kind), figures)

    def problem(self) -> tuple[str, str] | None:
        """The first field that no plan could hold, and why; ``None`` when all are fine."""
        if self.kind not in ACTION_KINDS:
            return "kind", f"{self.kind!r} is not one of {', '.join(ACTION_KINDS)}"
        for name in ("std", "mean"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value):
                return name, f"{value!r} is not a finite number"
        if self.std < 0:
            return "std", f"{self.std!r} is negative (a standard deviation is >= 0)"
        if self.kind == "callable" and not (isinstance(self.name, str) and self.name):
            return "name", "a callable action names its function"
        for name in ("name", "label"):
            if not isinstance(getattr(self, name), str):
                return name, f"{getattr(self, name)!r} is not a string"
        for i, pair in enumerate(self.figures):
            if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
                return f"figures[{i}]", f"{pair!r} is not a (name, value) pair"
            value = pair[1]
            if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (
                    isinstance(value, float) and not math.isfinite(value)):
                return f"figures[{i}]", f"{value!r} is not a finite number or a string"
        return None


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
        """Read an entry from :meth:`to_dict`'s data (or version 1's parallel lists); a bad
        field raises ``ValueError`` or ``TypeError`` naming it."""
        if not isinstance(e, dict):
            raise TypeError(f"expected a JSON object, got {type(e).__name__}")
        params = _read(e, "params", lambda v: {_text(k): tuple(_dim(d) for d in shape)
                                               for k, shape in v.items()})
        if "sites" in e:
            sites = _read(e, "sites", _each(Site.from_dict))
        else:  # version 1: parallel lists
            nodes = _read(e, "nodes", lambda v: [_text(n) for n in v])
            positions = _read(e, "positions", lambda v: [_text(p) for p in v])

            def at(key: str, i: int) -> str:
                values = e.get(key, ())
                return _read({key: values[i]}, key, _text) if i < len(values) else ""
            sites = tuple(Site("residual" if at("merges", i) else "module", node,
                               at("merges", i), at("skips", i), zero_at=at("zero_at", i),
                               position=positions[min(i, len(positions) - 1)]
                               if positions else "")
                          for i, node in enumerate(nodes))
        action = _read(e, "action", Action.from_dict, ZERO)
        return cls(_read(e, "module", _text), _read(e, "module_type", _text), params, sites,
                   _read(e, "rule", _text), action)

    def problem(self) -> tuple[str, str] | None:
        """The first field of this entry that no plan could hold, and why; ``None`` when
        all are fine (whether the model has these parameters is for ``apply`` to say)."""
        for name in ("module", "module_type", "rule"):
            if not isinstance(getattr(self, name), str):
                return name, f"{getattr(self, name)!r} is not a string"
        if self.module and not _is_fqn(self.module):
            return "module", f"{self.module!r} is not a module FQN (names joined by dots)"
        if not isinstance(self.params, dict):
            return "params", "expected a mapping of parameter FQN to shape"
        prefix = f"{self.module}." if self.module else ""
        for fqn, shape in self.params.items():
            if not (isinstance(fqn, str) and _is_fqn(fqn)):
                return "params", f"{fqn!r} is not a parameter FQN (names joined by dots)"
            # DDP's `module.` prefix may be on either name: apply looks both ways too
            if not _under(fqn, prefix):
                return "params", (f"`{fqn}` is not a parameter of module `{self.module}` "
                                  f"(it would start with `{prefix}`)")
            if not isinstance(shape, tuple) or any(
                    isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
                return f"params[{fqn!r}]", f"shape {shape!r} is not non-negative integers"
        if not isinstance(self.sites, tuple) or not all(isinstance(s, Site) for s in self.sites):
            return "sites", "expected a list of sites"
        if not isinstance(self.action, Action):
            return "action", f"expected an action, got {type(self.action).__name__}"
        bad = self.action.problem()
        if bad is not None:
            return f"action.{bad[0]}", bad[1]
        return None


@dataclass(frozen=True)
class Plan:
    """What would be written, by FQN (:class:`zeta_fx.ZeroInitPlan` adds the verb ``apply``).

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
    def from_json(cls, text: str) -> "Plan":
        """Read a plan written by :meth:`to_json`; a corrupted text raises ``PlanFormatError``.

        Non-finite numbers (``Infinity``, ``NaN``, ``1e999``), shapes that are not
        non-negative integers, and pathologically deep nesting are refused as corrupted.

        >>> Plan.from_json('{"format": "zeta_fx.plan", "version": Infinity}')
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
    def from_dict(cls, data: Any) -> "Plan":
        """Read a plan from :meth:`to_dict`'s plain data; malformed data raises
        ``PlanFormatError``."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise PlanFormatError(f"not a zeta_fx plan: expected a JSON object with "
                                  f"\"format\": \"{PLAN_FORMAT}\"")
        if data.get("version") not in (1, PLAN_VERSION):
            raise PlanFormatError(f"plan version {data.get('version')!r} is not supported "
                                  f"(this zeta_fx reads versions 1 and {PLAN_VERSION}); make "
                                  "the plan again with this version")
        entries_data = data.get("entries")
        if not isinstance(entries_data, list):
            raise PlanFormatError("the plan's field `entries` is missing or not a list; make "
                                  "the plan again with ZeroInitPlan.to_json()")
        entries = []
        for i, e in enumerate(entries_data):
            try:
                entries.append(PlanEntry.from_dict(e))
            except RecursionError:
                raise PlanFormatError(f"plan entry {i} is nested too deeply; make the plan "
                                      "again") from None
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
                module = e.get("module") if isinstance(e, dict) else None
                where = f" (module `{module}`)" if isinstance(module, str) else ""
                raise PlanFormatError(f"plan entry {i}{where}: {_said(exc)}; nothing was "
                                      "written. Make the plan again, or fix that field") from None
        fields: dict[str, Any] = {}
        for name, parse, default in (("rule", _text, _MISSING), ("model", _text, _MISSING),
                                     ("init", _text, "zero"), ("seed", _seed, None),
                                     ("skipped", _each(Skipped.from_dict), ())):
            try:
                fields[name] = _read(data, name, parse, default)
            except RecursionError:
                raise PlanFormatError(f"the plan's field `{name}` is nested too deeply; make "
                                      "the plan again") from None
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
                raise PlanFormatError(f"the plan: {_said(exc)}; make the plan again, or fix "
                                      "that field") from None
        plan = cls(tuple(entries), fields["rule"], fields["model"], fields["skipped"],
                   fields["init"], fields["seed"])
        plan.validate()
        return plan

    def validate(self) -> None:
        """Check every field of the plan and of every entry (kinds, finite numbers in range,
        seed, shapes, FQNs, no parameter named twice) before anything is written; raise
        :class:`~zeta_fx.errors.PlanFormatError` naming the entry and the field.

        Apply calls it first, so a plan edited by hand (or built with
        ``dataclasses.replace``) fails whole, never half-applied.

        >>> import dataclasses
        >>> bad = Plan((PlanEntry("fc", "Linear", {"fc.weight": (2, 2)}, (), "r",
        ...                             Action("normal", std=-1.0)),), "r", "Net", seed=0)
        >>> bad.validate()
        Traceback (most recent call last):
        ...
        zeta_fx.errors.PlanFormatError: plan entry 0 (module `fc`), field `action.std`: -1.0 is negative ...
        """
        for name in ("rule", "model", "init"):
            if not isinstance(getattr(self, name), str):
                raise PlanFormatError(f"the plan's field `{name}`: {getattr(self, name)!r} is "
                                      "not a string; make the plan again")
        bad_seed = seed_problem(self.seed)
        if bad_seed is not None:
            raise PlanFormatError(f"the plan's field `seed`: {bad_seed}; make the plan again "
                                  "(or pass seed= when you make it)")
        if not isinstance(self.entries, tuple) or not all(isinstance(e, PlanEntry)
                                                          for e in self.entries):
            raise PlanFormatError("the plan's field `entries` is not a list of PlanEntry")
        if not isinstance(self.skipped, tuple) or not all(isinstance(s, Skipped)
                                                          for s in self.skipped):
            raise PlanFormatError("the plan's field `skipped` is not a list of Skipped")
        owner: dict[str, int] = {}
        for i, entry in enumerate(self.entries):
            bad = entry.problem()
            if bad is None and entry.action.kind == "normal" and self.seed is None:
                bad = ("action.kind", "a normal draw needs the plan's seed, and the plan's "
                                      "`seed` is null")
            if bad is None:
                twice = next((fqn for fqn in entry.params if fqn in owner), None)
                if twice is not None:
                    bad = ("params", f"`{twice}` is also named by entry {owner[twice]}")
                owner.update(dict.fromkeys(entry.params, i))
            if bad is not None:
                module = f" (module `{entry.module}`)" if isinstance(entry.module, str) else ""
                raise PlanFormatError(f"plan entry {i}{module}, field `{bad[0]}`: {bad[1]}; "
                                      "nothing was written. Make the plan again, or fix that "
                                      "field")


def seed_problem(seed: Any) -> str | None:
    """Why ``seed`` cannot seed a plan (``None`` when it can: an integer in ``[0, 2**64)``,
    or ``None`` for no seed).

    >>> seed_problem(7) is None, seed_problem(-1), seed_problem(1.5)
    (True, '-1 is not an integer in [0, 2**64)', '1.5 is not an integer in [0, 2**64)')
    """
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or \
            not 0 <= int(seed) < 2**64:
        return f"{seed!r} is not an integer in [0, 2**64)"
    return None


def check_seed(seed: Any) -> None:
    """Refuse a ``seed=`` argument no plan can hold, with :class:`~zeta_fx.errors.PlanError`.

    >>> check_seed(0)
    >>> check_seed("0")
    Traceback (most recent call last):
    ...
    zeta_fx.errors.PlanError: seed='0' is not an integer in [0, 2**64); pass an integer such as seed=0, or leave it out to draw one
    """
    bad = seed_problem(seed)
    if bad is not None:
        raise PlanError(f"seed={seed!r} is not an integer in [0, 2**64); pass an integer such as "
                        "seed=0, or leave it out to draw one")


class _Missing:
    pass


_MISSING: Any = _Missing()


def _read(data: dict[str, Any], key: str, parse: Callable[[Any], Any],
          default: Any = _MISSING) -> Any:
    """``parse(data[key])``; a missing key (without a default) or a bad value raises
    ``ValueError`` naming the field."""
    if key not in data:
        if default is _MISSING:
            raise _FieldError(key, "")
        return default
    try:
        return parse(data[key])
    except _FieldError as exc:  # a nested field: name the path
        sep = "" if exc.field.startswith("[") else "."
        raise _FieldError(f"{key}{sep}{exc.field}", exc.problem) from None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise _FieldError(key, _said(exc)) from None


def _each(parse: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    """A parser of a list whose items ``parse`` reads; a bad item is named by its index."""
    def parse_all(items: Any) -> tuple[Any, ...]:
        if not isinstance(items, list):
            raise TypeError(f"expected a list, got {type(items).__name__}")
        out = []
        for i, item in enumerate(items):
            try:
                out.append(parse(item))
            except _FieldError as exc:
                sep = "" if exc.field.startswith("[") else "."
                raise _FieldError(f"[{i}]{sep}{exc.field}", exc.problem) from None
            except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
                if isinstance(exc, KeyError):
                    raise _FieldError(f"[{i}].{exc.args[0]}", "") from None
                raise _FieldError(f"[{i}]", _said(exc)) from None
        return tuple(out)
    return parse_all


class _FieldError(ValueError):
    """A bad field; ``problem`` is empty for a missing one."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field `{field}`: {problem}" if problem else
                         f"field `{field}` is missing")
        self.field, self.problem = field, problem


def _pair_error(pair: Any) -> Any:
    raise TypeError(f"expected a [name, value] pair, got {pair!r}")


def _said(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, KeyError):
        return f"field `{text}` is missing"
    return text or type(exc).__name__


def _seed(value: Any) -> int | None:
    bad = seed_problem(value)
    if bad is not None:
        raise ValueError(bad)
    return value


def _under(fqn: str, prefix: str) -> bool:
    bare = prefix.removeprefix("module.")
    return any(name.startswith(p) and len(name) > len(p)
               for name in (fqn, fqn.removeprefix("module.")) for p in (prefix, bare))


def _is_fqn(text: str) -> bool:
    return bool(text) and all(text.split("."))


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
    """A figure's value: a string, an integer (``depth`` is -1 off the branches) or a number."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value
    raise TypeError(f"a figure is a number or a string, got {value!r}")
