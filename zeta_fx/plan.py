"""Plans: what to zero, by FQN. Made from a rule's selection; applied atomically.

A plan made on one instance (on the meta device, say) applies to another instance of the
same architecture: materialised, wrapped in ``DistributedDataParallel``, or sharded with
FSDP2. Every target is validated before the first tensor is written.

>>> import torch
>>> from torch import nn
>>> from zeta_fx import zero_init_pass
>>> from zeta_fx.plan import ZeroInitPlan
>>> def make():
...     return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
>>> plan = zero_init_pass(make(), rule="output_layer", dry_run=True).plan
>>> again = ZeroInitPlan.from_json(plan.to_json())
>>> other = make()
>>> again.apply(other).params
['2.weight', '2.bias']
>>> bool(other[2].weight.any())
False
"""

from __future__ import annotations

import bisect
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from zeta_fx.errors import (NotAModuleError, PartialWriteError, PlanFormatError,
                            PlanMismatchError, TiedParameterError, UnsupportedParameterError)
from zeta_fx.picture import PictureSource
from zeta_fx.utils import zero_tensor_
from zeta_fx.wrappers import check_writable, unwrap

if TYPE_CHECKING:
    from zeta_fx.analysis import GraphView
    from zeta_fx.report import ZeroInitReport
    from zeta_fx.rules import Selection, Skipped

__all__ = ["PlanEntry", "ZeroInitPlan", "build_plan", "resolve", "write_resolved",
           "dry_run_report"]

logger = logging.getLogger("zeta_fx")

PLAN_FORMAT = "zeta_fx.plan"
PLAN_VERSION = 1


@dataclass(frozen=True)
class PlanEntry:
    """One module whose parameters ``params`` (FQN -> shape) are to be zeroed.

    ``zero_at[i]`` names the graph value that zeroing makes exactly zero at site
    ``nodes[i]`` (the branch term of a residual join, the model output); ``verify=True``
    checks it. Empty where the rule names none: the layer's own output is checked then.
    ``merges[i]``/``skips[i]``, for a residual site, name the merge node and its skip
    operand: the claim is that the merge now equals the skip value exactly.
    """

    module: str
    module_type: str
    params: dict[str, tuple[int, ...]]
    nodes: tuple[str, ...]
    positions: tuple[str, ...]
    rule: str
    zero_at: tuple[str, ...] = ()
    merges: tuple[str, ...] = ()
    skips: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "module_type": self.module_type,
                "params": {k: list(v) for k, v in self.params.items()},
                "nodes": list(self.nodes), "positions": list(self.positions), "rule": self.rule,
                "zero_at": list(self.zero_at), "merges": list(self.merges),
                "skips": list(self.skips)}


@dataclass(frozen=True)
class ZeroInitPlan:
    """What would be zeroed, by FQN; :meth:`apply` zeroes it on any instance of the model."""

    entries: tuple[PlanEntry, ...]
    rule: str
    model: str
    skipped: tuple["Skipped", ...] = field(default=(), compare=False)
    # Kept for report.to_dot(); a reference to the view, nothing computed at pass time.
    picture: "PictureSource | None" = field(default=None, compare=False, repr=False)

    @property
    def modules(self) -> list[str]:
        return [e.module for e in self.entries]

    @property
    def params(self) -> list[str]:
        return [fqn for e in self.entries for fqn in e.params]

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "rule": self.rule,
                "model": self.model, "entries": [e.to_dict() for e in self.entries]}

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
        if data.get("version") != PLAN_VERSION:
            raise PlanFormatError(f"plan version {data.get('version')!r} is not supported "
                                  f"(this zeta_fx reads version {PLAN_VERSION}); make the plan "
                                  "again with this version")
        try:
            entries = tuple(
                PlanEntry(_text(e["module"]), _text(e["module_type"]),
                          {_text(k): tuple(_dim(d) for d in v) for k, v in e["params"].items()},
                          tuple(_text(n) for n in e["nodes"]),
                          tuple(_text(p) for p in e["positions"]), _text(e["rule"]),
                          tuple(_text(z) for z in e.get("zero_at", ())),
                          tuple(_text(m) for m in e.get("merges", ())),
                          tuple(_text(k) for k in e.get("skips", ())))
                for e in data["entries"])
            return cls(entries, _text(data["rule"]), _text(data["model"]))
        except RecursionError:
            raise PlanFormatError("the plan's entries are nested too deeply; make the plan "
                                  "again") from None
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise PlanFormatError(f"the plan's entries are malformed ({type(exc).__name__}: "
                                  f"{exc}); make the plan again") from None

    def apply(self, model: nn.Module, *, allow_tied: bool = False,
              _named: dict[str, torch.Tensor] | None = None) -> "ZeroInitReport":
        """Zero every planned parameter of ``model`` in place and return the report.

        All targets are resolved and validated first; if any is missing, has another shape,
        or cannot be written in place, an error lists every problem and nothing is written.
        """
        named = _named if _named is not None else _named_params(model)
        tensors = resolve(self, model, allow_tied=allow_tied, named=named)
        return write_resolved(self, tensors, named)


def write_resolved(plan: ZeroInitPlan, tensors: dict[str, torch.Tensor],
                   named: dict[str, torch.Tensor]) -> "ZeroInitReport":
    """Zero ``tensors`` (what :func:`resolve` returned for ``plan``) and report.

    ``changed`` is decided exactly before the first write. A failure part-way raises
    :class:`~zeta_fx.errors.PartialWriteError` naming what was and was not written.
    """
    from zeta_fx.report import ZeroInitReport

    _refuse_meta(tensors)
    changed = _any_nonzero(list(tensors.values()))
    _zero_all_(tensors)
    logger.info("zeta_fx: zeroed %d parameters in %d modules (rule %s)",
                len(tensors), len(plan.entries), plan.rule)
    return ZeroInitReport(plan, list(plan.skipped), applied=True, changed=changed,
                          total_params=_count_params(named))


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


def _plain(tensors: list[torch.Tensor]) -> bool:
    """Plain dense tensors on one device, fit for the fused ``torch._foreach_*`` kernels."""
    return bool(tensors) and all(type(t) in (torch.Tensor, nn.Parameter) and not t.is_meta
                                 for t in tensors) and len({t.device for t in tensors}) == 1


def _any_nonzero(tensors: list[torch.Tensor]) -> bool:
    """Whether zeroing would change any value, decided exactly: any element whose bits are
    not a (signed) zero counts, however small (1e-30, subnormals) and NaN too. Meta tensors
    hold no values: writing them counts as a change."""
    flags: dict[torch.device, list[torch.Tensor]] = {}
    with torch.no_grad():
        locals_ = []
        for tensor in tensors:
            if tensor.is_meta:
                return True
            local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # own shard
            if local.numel():
                locals_.append(local.detach())
        # A trained or freshly initialised tensor shows a non-zero in its first values: one
        # found there decides it, exactly, without reading every tensor whole.
        for local in locals_:
            if local.is_contiguous() and local.numel() > 4096 and \
                    bool(_nonzero_flag(local.view(-1)[:4096])):
                return True
        # small tensors of one dtype and device (norm weights and biases): one check for all
        small: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for local in locals_:
            if local.numel() <= 4096 and type(local) in (torch.Tensor, nn.Parameter):
                small.setdefault((local.device, local.dtype), []).append(local.reshape(-1))
            else:
                flags.setdefault(local.device, []).append(_nonzero_flag(local))
        for (device, _), group in small.items():
            flags.setdefault(device, []).append(_nonzero_flag(torch.cat(group)))
        return any(bool(torch.stack(group).any()) for group in flags.values())


_SIGNLESS = {1: (torch.uint8, 0x7F), 2: (torch.int16, 0x7FFF), 4: (torch.int32, 0x7FFFFFFF),
             8: (torch.int64, 0x7FFFFFFFFFFFFFFF)}


def _nonzero_flag(tensor: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor: whether ``tensor`` holds a value other than +0 or -0.

    Floats are read as bit patterns, so a flush-denormals setting cannot hide a subnormal.
    """
    if tensor.is_complex():
        tensor = torch.view_as_real(tensor)
    if tensor.is_floating_point() and tensor.element_size() in _SIGNLESS:
        ints, mask = _SIGNLESS[tensor.element_size()]
        return tensor.view(ints).bitwise_and(mask).ne(0).any()
    return tensor.ne(0).any()


def _refuse_meta(tensors: dict[str, torch.Tensor]) -> None:
    meta = [name for name, t in tensors.items() if t.is_meta]
    if meta:
        raise UnsupportedParameterError(
            f"`{meta[0]}` is on the meta device and holds no values: zeroing it now would be "
            "lost when the model is materialised. Plan with dry_run=True "
            "(`plan = zero_init_pass(meta_model, rule, dry_run=True).plan`) and call "
            "`plan.apply(model)` after `to_empty()` and the model's own init; nothing was "
            "written")


def _zero_all_(tensors: dict[str, torch.Tensor]) -> None:
    """Zero in place: one fused kernel for plain tensors, else tensor by tensor.

    If a write fails part-way, :class:`PartialWriteError` says which tensors were zeroed and
    which were not; zeroing is idempotent, so applying the plan again completes it.
    """
    items = list(tensors.values())
    if _plain(items):
        try:
            with torch.no_grad():
                torch._foreach_zero_(items)
            return
        except Exception:  # write one by one below, which says exactly where it stops
            logger.debug("zeta_fx: fused zeroing failed; zeroing tensor by tensor", exc_info=True)
    written: list[str] = []
    for name, tensor in tensors.items():
        try:
            zero_tensor_(tensor)
        except Exception as exc:
            unwritten = [n for n in tensors if n not in written]
            raise PartialWriteError(
                f"zeroing stopped at `{name}` ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}): "
                f"{len(written)} of {len(tensors)} planned tensors were zeroed "
                f"({_names(written)}), {len(unwritten)} were not ({_names(unwritten)}). "
                "The model is half-initialised: fix the cause and apply the plan again "
                "(`plan.apply(model)`), which completes it (zeroing is idempotent)",
                written, unwritten) from exc
        written.append(name)


def _names(names: list[str], limit: int = 8) -> str:
    if not names:
        return "none"
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")


def _named_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of the model inside any DDP / torch.compile wrapper, tied ones too,
    after refusing wrappers whose parameters no FQN can address (FSDP1)."""
    if not isinstance(model, nn.Module):
        raise NotAModuleError(f"a plan applies to an nn.Module, got {type(model).__name__}")
    inner = unwrap(model)[0]
    check_writable(inner)
    return dict(inner.named_parameters(remove_duplicate=False))


def _count_params(named: dict[str, torch.Tensor]) -> int:
    """Parameter elements, each tied tensor counted once."""
    return sum(p.numel() for p in {id(p): p for p in named.values()}.values())


def _planned_params(view: "GraphView", fqns: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """The stored parameters to zero for a layer's ``fqns``, with their shapes.

    ``weight_norm`` (``torch.nn.utils.parametrizations`` or the legacy hook) computes
    ``weight = g * v / ||v||``: zeroing the magnitude ``g`` gives an exact zero, finite
    weight, so ``g`` is planned instead. Other computed weights (``spectral_norm``: W / sigma(W)
    is never zero) and uninitialised lazy parameters are refused before anything is written.
    """
    params: dict[str, tuple[int, ...]] = {}
    for fqn in fqns:
        stored = fqn if fqn in view.params else _weight_norm_magnitude(view.root, fqn)
        tensor = view.params[stored]
        if isinstance(tensor, UninitializedParameter):
            raise UnsupportedParameterError(
                f"`{stored}` is an uninitialised lazy parameter; run one forward pass to "
                "materialise the lazy modules, then apply the pass; nothing was written")
        params[stored] = tuple(tensor.shape)
    return params


def _weight_norm_magnitude(model: nn.Module, fqn: str) -> str:
    from torch.nn.utils import parametrize
    from torch.nn.utils.weight_norm import WeightNorm

    owner, _, name = fqn.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    prefix = f"{owner}." if owner else ""
    if parametrize.is_parametrized(module, name):
        chain = list(module.parametrizations[name])
        if len(chain) == 1 and type(chain[0]).__name__ == "_WeightNorm":
            return f"{prefix}parametrizations.{name}.original0"
        kinds = ", ".join(type(p).__name__.lstrip("_") for p in chain)
        raise UnsupportedParameterError(
            f"`{fqn}` (module `{owner}`) is computed by the parametrization {kinds}; no "
            "stored tensor can be zeroed to make it an exact, finite zero (spectral_norm "
            "divides by the largest singular value). Remove it with torch.nn.utils.parametrize"
            f".remove_parametrizations(module, {name!r}) before the pass, or leave this layer "
            "out of the rule; nothing was written")
    _refuse_pruned(module, owner, name)
    hooks = list(module._forward_pre_hooks.values())
    if any(isinstance(h, WeightNorm) and h.name == name for h in hooks):
        return f"{prefix}{name}_g"
    kinds = ", ".join(type(h).__name__ for h in hooks if getattr(h, "name", None) == name)
    raise UnsupportedParameterError(
        f"`{fqn}` (module `{owner}`) is not a stored parameter"
        + (f" but computed by a {kinds} hook" if kinds else "")
        + f"; zeroing it would not last. Remove the reparametrisation (e.g. "
        "torch.nn.utils.remove_spectral_norm) before the pass; nothing was written")


def _refuse_pruned(module: nn.Module, owner: str, name: str) -> None:
    """``torch.nn.utils.prune`` keeps ``{name}_orig`` and a ``{name}_mask`` buffer and
    recomputes ``name`` in a forward pre-hook: refuse, and say how to make it permanent."""
    from torch.nn.utils.prune import BasePruningMethod

    base = name.removesuffix("_orig")
    pruned = any(isinstance(h, BasePruningMethod) and getattr(h, "_tensor_name", None) == base
                 for h in module._forward_pre_hooks.values())
    if not pruned and not (f"{base}_mask" in module._buffers
                           and f"{base}_orig" in module._parameters):
        return
    where = f"model.get_submodule({owner!r})" if owner else "model"
    raise UnsupportedParameterError(
        f"`{owner + '.' if owner else ''}{base}` (module `{owner or '(root)'}`, "
        f"{type(module).__name__}) is pruned with torch.nn.utils.prune: its `{base}` is "
        f"recomputed as `{base}_orig * {base}_mask` by a forward pre-hook on every call, so "
        "no stored tensor is the weight the rule would zero. Make the pruning permanent "
        f"first: `torch.nn.utils.prune.remove({where}, {base!r})`, then run the pass; "
        "nothing was written")


def _pruning_owner(model: nn.Module, fqn: str) -> tuple[nn.Module, str, str] | None:
    owner, _, name = fqn.rpartition(".")
    for path in (owner, owner.removeprefix("module."), f"module.{owner}" if owner else owner):
        try:
            return (model.get_submodule(path) if path else model), path, name
        except AttributeError:
            continue
    return None


def _zeroable(dtype: torch.dtype) -> str | None:
    """Why a tensor of ``dtype`` cannot be zeroed in place to an exact zero, or None.

    Bool and integer tensors are not weights an initialisation writes; some narrow float
    formats cannot hold a zero (``float8_e8m0fnu``: ``zero_()`` writes 2**-127) or cannot be
    written in place at all. Probed on a one-element CPU tensor.
    """
    if not (dtype.is_floating_point or dtype.is_complex):
        return f"its dtype {dtype} is not a floating-point type, so it is not a weight to zero"
    if dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return None
    try:  # an explicit device: the caller may be inside `with torch.device("meta")`
        probe = torch.ones(1, dtype=torch.float32, device="cpu").to(dtype)
        probe.zero_()
        value = float(probe.to(torch.float32).item())
    except Exception as exc:
        return (f"torch cannot zero {dtype} in place here ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})")
    if value != 0.0:
        return f"{dtype} cannot represent zero (`zero_()` writes {value:g})"
    return None


def _lookup(named: dict[str, torch.Tensor], fqn: str) -> tuple[str, torch.Tensor] | None:
    """Find ``fqn`` in ``named``, allowing for a DDP ``module.`` prefix on either side."""
    for candidate in (fqn, f"module.{fqn}", fqn.removeprefix("module.")):
        if candidate in named:
            return candidate, named[candidate]
    return None


def _is_parametrized(model: nn.Module, fqn: str) -> bool:
    owner, _, name = fqn.rpartition(".")
    try:
        module = model.get_submodule(owner.removeprefix("module.")) if owner else model
    except AttributeError:
        try:
            module = model.get_submodule(f"module.{owner}")
        except AttributeError:
            return False
    return torch.nn.utils.parametrize.is_parametrized(module, name)


def resolve(plan: ZeroInitPlan, model: nn.Module, *, allow_tied: bool = False,
            named: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Map each planned FQN to the model's own tensor, or raise listing every problem.

    ``named`` is ``dict(model.named_parameters(remove_duplicate=False))`` when the caller
    already has it.
    """
    if not isinstance(model, nn.Module):
        raise NotAModuleError(f"a plan applies to an nn.Module, got {type(model).__name__}")
    if named is None:  # a caller that lists the parameters has already checked the model
        named = _named_params(model)
    model = unwrap(model)[0]  # DDP / torch.compile wrappers add FQN prefixes
    found: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    reasons: dict[torch.dtype, str | None] = {}
    for entry in plan.entries:
        for fqn, shape in entry.params.items():
            hit = _lookup(named, fqn)
            pruning = _pruning_owner(model, fqn)
            if pruning is not None:
                _refuse_pruned(*pruning)
            if hit is None:
                if _is_parametrized(model, fqn):
                    raise UnsupportedParameterError(
                        f"`{fqn}` (module `{entry.module}`) is parametrized (weight_norm, "
                        "spectral_norm, ...): zeroing the stored tensors would not give a zero, "
                        "finite weight. Remove the parametrization before the pass, or zero "
                        "the layer yourself; nothing was written")
                problems.append(f"`{fqn}` (module `{entry.module}`, {entry.module_type}) is not "
                                "a parameter of this model")
                continue
            name, tensor = hit
            if isinstance(tensor, UninitializedParameter):
                raise UnsupportedParameterError(
                    f"`{name}` (module `{entry.module}`) is an uninitialised lazy parameter; "
                    "run one forward pass to materialise the lazy modules, then apply the "
                    "pass; nothing was written")
            if tuple(tensor.shape) != tuple(shape):
                problems.append(f"`{name}` has shape {tuple(tensor.shape)}, the plan expects "
                                f"{tuple(shape)}")
                continue
            if tensor.is_inference():
                raise UnsupportedParameterError(
                    f"`{name}` (module `{entry.module}`) was created under "
                    "torch.inference_mode() and cannot be written in place; build the model "
                    "outside inference_mode; nothing was written")
            if tensor.dtype not in reasons:
                reasons[tensor.dtype] = _zeroable(tensor.dtype)
            if reasons[tensor.dtype] is not None:
                raise UnsupportedParameterError(
                    f"`{name}` (module `{entry.module}`, {entry.module_type}) cannot be "
                    f"zeroed: {reasons[tensor.dtype]}. Leave this layer out of the rule, or "
                    "zero it after casting the model to a float dtype; nothing was written")
            found[name] = tensor
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise PlanMismatchError(
            f"the plan (rule {plan.rule}, made for `{plan.model}`) does not fit this "
            f"`{type(model).__name__}`:\n  {shown}{more}\nMake the plan on the same "
            "architecture; nothing was written")
    _check_tied(found, named, allow_tied, model)
    if not allow_tied:
        _check_shared_storage(found, named, model)
    return found


def _same_module_slot(model: nn.Module, a: str, b: str) -> bool:
    """Whether FQNs ``a`` and ``b`` name one parameter of one module object registered under
    two paths (a shared block): that is sharing the graph analysis already saw, not a tie."""
    (pa, _, na), (pb, _, nb) = a.rpartition("."), b.rpartition(".")
    if na != nb:
        return False
    try:
        return model.get_submodule(pa) is model.get_submodule(pb)
    except AttributeError:
        return False


def _check_tied(found: dict[str, torch.Tensor], named: dict[str, torch.Tensor],
                allow_tied: bool, model: nn.Module | None = None) -> None:
    targets = {id(t): name for name, t in found.items()}
    for alias, tensor in named.items():
        name = targets.get(id(tensor))
        if name is None or alias in found or allow_tied:
            continue
        if model is not None and _same_module_slot(model, alias, name):
            continue  # one module registered under two paths: shared, not tied
        raise TiedParameterError(
            f"`{name}` is tied to `{alias}` (the same tensor): zeroing it would also "
            f"zero `{alias}`, which the rule did not select. Untie them, or pass "
            "allow_tied=True to zero both; nothing was written")


def _byte_span(tensor: torch.Tensor) -> tuple[tuple[Any, int], int, int] | None:
    """(storage key, first byte, end byte) of the memory ``tensor`` can address, or None
    for tensors with no storage of their own to share (meta, empty, wrapper subclasses)."""
    try:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        if local.is_meta or local.numel() == 0:
            return None
        storage = local.untyped_storage()
        size = local.element_size()
        start = local.storage_offset() * size
        extent = sum((n - 1) * abs(st) for n, st in zip(local.shape, local.stride())) + 1
        key = (local.device, storage.data_ptr())
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return key, start, start + extent * size


def _check_shared_storage(found: dict[str, torch.Tensor], named: dict[str, torch.Tensor],
                          model: nn.Module) -> None:
    """Refuse a target whose memory another parameter or buffer outside the plan also uses
    (a view, ``p.data = q.data[...]``): zeroing it would silently change that one too."""
    spans: dict[Any, list[tuple[int, int, str]]] = {}
    for name, tensor in found.items():
        span = _byte_span(tensor)
        if span is not None:
            spans.setdefault(span[0], []).append((span[1], span[2], name))
    if not spans:
        return
    targets = {id(t) for t in found.values()}
    others = [(n, t, "parameter") for n, t in named.items() if n not in found]
    others += [(n, t, "buffer") for n, t in model.named_buffers(remove_duplicate=False)
               if t is not None]
    keys = {key[1] for key in spans}
    ranges = []  # the byte ranges of the targets' whole storages
    for t in found.values():
        try:
            local = t.to_local() if hasattr(t, "to_local") else t
            storage = local.untyped_storage()
            ranges.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes()))
        except (RuntimeError, NotImplementedError, TypeError):
            ranges = []
            break
    ranges.sort()
    starts = [r[0] for r in ranges]
    for other, tensor, kind in others:
        if id(tensor) in targets:
            continue  # the same tensor: _check_tied has decided about it
        try:  # cheap first look: a tensor that starts outside every target storage
            local = tensor if type(tensor) in (torch.Tensor, nn.Parameter) else (
                tensor.to_local() if hasattr(tensor, "to_local") else tensor)
            if local.is_meta:
                continue
            if ranges:
                ptr = local.data_ptr()
                i = bisect.bisect_right(starts, ptr) - 1
                if i < 0 or ptr >= ranges[i][1]:
                    continue
            if local.untyped_storage().data_ptr() not in keys:
                continue
        except (RuntimeError, NotImplementedError, TypeError):
            pass
        span = _byte_span(tensor)
        if span is None or span[0] not in spans:
            continue
        for start, end, name in spans[span[0]]:
            if start < span[2] and span[1] < end:
                raise TiedParameterError(
                    f"`{name}` shares storage with the {kind} `{other}` (a view of it, or "
                    f"made with `.data = ...[...]`): zeroing `{name}` in place would also "
                    f"change `{other}`, which the plan does not name. Give `{name}` its own "
                    "storage (`module.weight = nn.Parameter(module.weight.detach().clone())`), "
                    "or pass allow_tied=True to zero the shared memory anyway; nothing was "
                    "written")


def build_plan(view: "GraphView", selection: "Selection", rule: str, model: nn.Module
               ) -> ZeroInitPlan:
    """Merge a rule's targets by module and drop modules also used where they must not be
    zeroed (a shared module that is last-on-branch at one site and elsewhere in another)."""
    from zeta_fx.rules import Skipped

    targets, partial = _without_partial_covers(view, list(selection.targets))
    grouped: dict[str, dict[str, Any]] = {}
    for target in targets:
        group = grouped.setdefault(target.module, {"params": {}, "nodes": {}, "positions": {},
                                                   "rules": {}, "zero_at": {}, "claims": {}})
        for fqn in target.params:
            group["params"][fqn] = None
        for node in target.nodes:
            group["nodes"][node] = None
            group["zero_at"].setdefault(node, getattr(target, "zero_at", ""))
            group["claims"].setdefault(node, (target.merge, target.skip))
        group["positions"][target.position] = None
        group["rules"][target.rule] = None
    skipped = list(selection.skipped) + partial
    entries = []
    node_names = {n.name: n for n in view.nodes}
    for module, group in grouped.items():
        chosen = set(group["nodes"])
        other_sites = sorted({c.name for fqn in group["params"]
                              for c in view.consumers.get(fqn, ()) if c.name not in chosen},
                             key=lambda n: view.index[node_names[n]])
        if other_sites:
            sites = ", ".join(f"`{n}`" for n in other_sites[:3])
            skipped.append(Skipped(
                next(iter(group["nodes"])), module,
                f"`{module}` is also used at {sites}, where the rule does not select it; "
                "zeroing it would change that use too", ", ".join(group["rules"])))
            continue
        params = _planned_params(view, group["params"])
        entries.append(PlanEntry(module, view.module_type(module), params,
                                 tuple(group["nodes"]), tuple(group["positions"]),
                                 ", ".join(group["rules"]),
                                 tuple(group["zero_at"][n] for n in group["nodes"]),
                                 tuple(group["claims"][n][0] for n in group["nodes"]),
                                 tuple(group["claims"][n][1] for n in group["nodes"])))
    return ZeroInitPlan(tuple(entries), rule, type(model).__name__, tuple(skipped),
                        PictureSource(view))


def _without_partial_covers(view: "GraphView", targets: list) -> tuple[list, list]:
    """Drop the targets of every cover (the layers that together zero one branch) that
    lost a member: a module also used where the rule does not select it is left alone
    (``build_plan`` reports it), and then zeroing the others would not make that branch
    zero. Repeats until stable, since dropping a target can leave its module with an
    unselected use."""
    from zeta_fx.rules import Skipped

    left_alone: list = []
    while True:
        nodes: dict[str, set[str]] = {}
        params: dict[str, set[str]] = {}
        for t in targets:
            nodes.setdefault(t.module, set()).update(t.nodes)
            params.setdefault(t.module, set()).update(t.params)
        shared = {m for m in nodes for fqn in params[m] for c in view.consumers.get(fqn, ())
                  if c.name not in nodes[m]}
        broken = {t.cover: t.module for t in targets if t.module in shared and t.cover}
        partners = [t for t in targets if t.cover in broken and t.module not in shared]
        if not partners:
            return targets, left_alone
        left_alone += [Skipped(t.nodes[0], t.module,
                               f"left alone: the branch it ends ({t.position}) is only zero "
                               f"if `{broken[t.cover]}` is zeroed too, and that is also used "
                               "where the rule does not select it", t.rule) for t in partners]
        targets = [t for t in targets if not (t.cover in broken and t.module not in shared)]


def dry_run_report(plan: ZeroInitPlan, model: nn.Module, *, allow_tied: bool = False,
                   _named: dict[str, torch.Tensor] | None = None) -> "ZeroInitReport":
    """Validate ``plan`` against ``model`` and report without writing anything.

    The report's ``changed`` says whether applying the plan would change a value; it is
    decided now, exactly, and does not change when the plan is applied later.
    """
    from zeta_fx.report import ZeroInitReport

    named = _named if _named is not None else _named_params(model)
    tensors = resolve(plan, model, allow_tied=allow_tied, named=named)
    return ZeroInitReport(plan, list(plan.skipped), applied=False,
                          changed=_any_nonzero(list(tensors.values())),
                          total_params=_count_params(named))


