"""Apply: resolve a plan on a model, validate everything, then write it (or not).

:func:`apply_plan` is the one place that touches the caller's tensors. It maps every
planned FQN to the model's own tensor and validates all of them (existence, shape, ties and
shared storage, lazy, pruned and parametrized weights, inference tensors, dtypes) before the
first write; decides ``changed`` exactly before writing; for ``verify=True`` checks every
claim by substitution (:mod:`zeta_fx.apply.verify`, nothing written); then writes under
``torch.no_grad()``, in place, nothing reallocated — or, for a dry run, does not. It returns
an :class:`Outcome`; the report is made from plan and outcome by the caller.

>>> import torch
>>> from torch import nn
>>> from zeta_fx import zero_init_pass
>>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
>>> plan = zero_init_pass(model, rule="output_layer", dry_run=True).plan
>>> apply_plan(plan, model, write=False)
Outcome(applied=False, changed=True, total_params=30, checks=None)
>>> apply_plan(plan, model).applied, bool(model[1].weight.any())
(True, False)
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import fx, nn

from zeta_fx.errors import (NotAModuleError, PartialWriteError, PlanError, PlanMismatchError,
                            TiedParameterError, UnsupportedParameterError, VerificationError)
from zeta_fx.rules.selection import Site
from zeta_fx.tensors import any_nonzero, byte_span, count_params, is_plain, lazy_error
from zeta_fx.semantics.modules import pruning_problem
from zeta_fx.utils import zero_tensor_
from zeta_fx.apply.verify import SiteCheck, check_claims, failure_message
from zeta_fx.plan.records import PlanEntry, Plan


__all__ = ["Outcome", "InitSite", "apply_plan", "resolve", "tensor_seed",
           "check_draw_fits"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What applying a plan did: ``applied`` (values were written), ``changed`` (a value
    changed, or for a dry run would change; decided before any write), ``total_params``
    (parameter elements of the model, tied ones once) and, for ``verify=True``, ``checks``:
    each row node's :class:`~zeta_fx.apply.verify.SiteCheck`."""

    applied: bool
    changed: bool
    total_params: int
    checks: dict[str, SiteCheck] | None = None


@dataclass(frozen=True)
class InitSite:
    """What an ``init=callable`` receives beside the tensor: where the tensor sits.

    ``depth`` is the 0-based index of its residual branch in graph order (``-1`` where it
    ends none), ``branches`` the number of residual branches the rule found, and
    ``branch_layers`` the module FQNs of the weight layers on its branch, in graph order.
    """

    fqn: str
    module: str
    sites: tuple[Site, ...]
    depth: int
    branches: int
    branch_layers: tuple[str, ...]


def apply_plan(plan: "Plan", model: nn.Module, *, write: bool = True,
               allow_tied: bool = False, init: Callable[..., Any] | None = None,
               named: dict[str, torch.Tensor] | None = None,
               buffers: dict[str, torch.Tensor] | None = None,
               verify: tuple[fx.GraphModule, list[Any]] | None = None) -> Outcome:
    """Validate ``plan`` against ``model``, then write it (``write=False``: a dry run).

    ``model`` is the model itself: the verbs see through DDP and ``torch.compile`` wrappers
    and refuse FSDP1 before they get here (capture for the pass,
    :meth:`zeta_fx.ZeroInitPlan.apply` for a plan), so apply is entered once, with it.

    ``verify=(gm, args)`` first checks every claim of the plan on the graph ``gm`` (the one
    the plan was made from) with the planned zeros substituted, and raises
    :class:`~zeta_fx.errors.VerificationError` naming the node if one fails: nothing is
    written then. ``named`` is ``dict(model.named_parameters(remove_duplicate=False))`` and
    ``buffers`` ``dict(model.named_buffers(remove_duplicate=False))`` when the caller has them.
    """
    if not isinstance(model, nn.Module):
        raise NotAModuleError(f"a plan applies to an nn.Module, got {type(model).__name__}")
    plan.validate()  # every field of every entry, before anything else
    if named is None:
        named = _named_params(model)
    callables = [e for e in plan.entries if e.action.kind == "callable"]
    if callables and init is None:
        raise PlanError(
            f"this plan's entries (`{callables[0].module}`, ...) are initialised by the callable "
            f"`{callables[0].action.name}`, which a plan does not hold; pass it: "
            "`plan.apply(model, init=...)`; nothing was written")
    tensors = resolve(plan, model, allow_tied=allow_tied, named=named, buffers=buffers)
    if write:
        _refuse_meta(tensors)
    actions = _by_action(plan, tensors)
    for name, (tensor, entry) in actions.get("normal", {}).items():
        check_draw_fits(entry, name, tensor.dtype)
    zeros = actions.get("zero", {})
    changed = any_nonzero(list(zeros.values())) or any(
        t.numel() for kind, group in actions.items() if kind != "zero"
        for t, _ in group.values())
    checks = None
    if verify is not None:
        gm, args = verify
        checks = check_claims(plan, model, gm, args, zeros)
        failed = [c for c in checks.values() if not c.ok]
        if failed:
            raise VerificationError(failure_message(failed, plan))
        logger.debug("verified %d claims on example inputs", len(checks))
    if write:
        _write(plan, actions, init)
        logger.info("wrote %d parameters in %d modules (rule %s, init %s)",
                    len(tensors), len(plan.entries), plan.rule, plan.init)
    return Outcome(write, changed, count_params(named), checks)


def _by_action(plan: "Plan", tensors: dict[str, torch.Tensor]
               ) -> dict[str, dict[str, Any]]:
    """The resolved tensors by action kind: ``zero`` -> {name: tensor}, the others ->
    {name: (tensor, entry)}."""
    out: dict[str, dict[str, Any]] = {}
    for entry in plan.entries:
        for fqn in entry.params:
            hit = _lookup(tensors, fqn)
            if hit is None:
                continue
            name = hit[0]
            if entry.action.kind == "zero":
                out.setdefault("zero", {})[name] = tensors[name]
            else:
                out.setdefault(entry.action.kind, {})[name] = (tensors[name], entry)
    return out


# A draw of N(mean, std) lands beyond mean ± 10·std with probability 1.5e-23 per element:
# never, for any tensor that fits in memory.
_SIGMAS = 10.0


def check_draw_fits(entry: "PlanEntry", fqn: str, dtype: torch.dtype) -> None:
    """Refuse, before any write, a normal draw whose values ``dtype`` cannot hold: beyond its
    largest finite value (they would be stored as ``inf``), or a non-zero standard deviation
    that rounds to zero in it (the "random" init would be a constant). The draw is made in
    float32, so its range counts too.

    >>> from zeta_fx.plan.records import Action, PlanEntry
    >>> entry = PlanEntry("fc", "Linear", {"fc.weight": (2, 2)}, (), "r", Action("normal", std=1e5))
    >>> check_draw_fits(entry, "fc.weight", torch.bfloat16)
    >>> check_draw_fits(entry, "fc.weight", torch.float16)
    Traceback (most recent call last):
    ...
    zeta_fx.errors.PlanError: `fc.weight` (module `fc`) is torch.float16: N(0, 100000) draws values up to 1e+06 (mean ± 10·std), beyond float16's largest finite value 65504, ...
    """
    if not dtype.is_floating_point:
        return  # resolve() has refused it with its reason
    action = entry.action
    mean, std = action.mean, action.std
    reach = abs(mean) + _SIGMAS * std
    for where in (torch.float32, dtype):
        info = torch.finfo(where)
        if reach > info.max:
            raise PlanError(
                f"`{fqn}` (module `{entry.module}`) is {dtype}: N({mean:g}, {std:g}) draws "
                f"values up to {reach:g} (mean ± {_SIGMAS:g}·std), beyond "
                f"{str(where).removeprefix('torch.')}'s largest finite value {info.max:g}, so "
                "they would be stored as inf. Choose a smaller std, or initialise the model "
                "in a wider dtype and cast it after; nothing was written")
    if std > 0 and float(torch.tensor(std, dtype=torch.float64, device="cpu").to(dtype)) == 0.0:
        raise PlanError(
            f"`{fqn}` (module `{entry.module}`) is {dtype}: the standard deviation {std:g} of "
            f"its draw N({mean:g}, {std:g}) rounds to 0 in {str(dtype).removeprefix('torch.')} "
            f"(smallest positive value {torch.finfo(dtype).smallest_normal:g} normal), so the "
            "draw would be a constant. Choose a larger std, or initialise the model in a wider "
            "dtype and cast it after; nothing was written")


def tensor_seed(seed: int | None, fqn: str) -> int:
    """The generator seed of one tensor: the plan's seed and the parameter's FQN, hashed, so
    that every process (and every FSDP2 rank) draws the same full tensor.

    >>> tensor_seed(0, "h.0.attn.c_proj.weight") == tensor_seed(0, "module.h.0.attn.c_proj.weight")
    True
    """
    key = f"{seed}:{fqn.removeprefix('module.')}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


def _draw(tensor: torch.Tensor, fqn: str, entry: "PlanEntry", seed: int | None) -> torch.Tensor:
    """``N(mean, std)`` for the whole tensor, drawn on the CPU in float32 from the tensor's
    own generator (so the values do not depend on device, dtype or sharding), then this
    process's piece of it."""
    generator = torch.Generator(device="cpu").manual_seed(tensor_seed(seed, fqn))
    full = torch.empty(tuple(tensor.shape), dtype=torch.float32, device="cpu")
    full.normal_(entry.action.mean, entry.action.std, generator=generator)
    return _local_piece(tensor, full)


def _local_piece(tensor: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """The part of ``full`` (the whole tensor's values) that ``tensor`` holds here: all of
    it, or this rank's shard of a DTensor (no collective)."""
    if not hasattr(tensor, "to_local"):
        return full
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(
        tuple(tensor.shape), tensor.device_mesh, tensor.placements)
    return full[tuple(slice(o, o + s) for o, s in zip(offset, shape))]


def _write(plan: "Plan", actions: dict[str, dict[str, Any]],
           init: Callable[..., Any] | None) -> None:
    """Write every action; a failure part-way raises :class:`PartialWriteError`."""
    written: list[str] = []
    pending = [*actions.get("zero", {}), *actions.get("normal", {}), *actions.get("callable", {})]

    def fail(name: str, exc: Exception) -> PartialWriteError:
        unwritten = [n for n in pending if n not in written]
        return PartialWriteError(
            f"writing stopped at `{name}` ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}): "
            f"{len(written)} of {len(pending)} planned tensors were written "
            f"({_names(written)}), {len(unwritten)} were not ({_names(unwritten)}). "
            "The model is half-initialised: fix the cause and apply the plan again "
            "(`plan.apply(model)`), which completes it (zero and seeded draws are "
            "idempotent)", written, unwritten)

    zeros = actions.get("zero", {})
    if zeros:
        _zero_all_(zeros, written, fail)
    with torch.no_grad():
        for name, (tensor, entry) in actions.get("normal", {}).items():
            try:
                local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
                local.copy_(_draw(tensor, name, entry, plan.seed))
            except Exception as exc:
                raise fail(name, exc) from exc
            written.append(name)
    for name, (tensor, entry) in actions.get("callable", {}).items():
        try:
            with torch.no_grad():
                init(tensor, _init_site(name, entry))
        except Exception as exc:
            raise fail(name, exc) from exc
        written.append(name)


def _init_site(fqn: str, entry: "PlanEntry") -> InitSite:
    figures = dict(entry.action.figures)
    layers = figures.get("branch_layers", "")
    return InitSite(fqn, entry.module, entry.sites, int(figures.get("depth", -1)),
                    int(figures.get("L", 0)), tuple(layers.split(",")) if layers else ())


def _refuse_meta(tensors: dict[str, torch.Tensor]) -> None:
    meta = [name for name, t in tensors.items() if t.is_meta]
    if meta:
        raise UnsupportedParameterError(
            f"`{meta[0]}` is on the meta device and holds no values: zeroing it now would be "
            "lost when the model is materialised. Plan with dry_run=True "
            "(`plan = zero_init_pass(meta_model, rule, dry_run=True).plan`) and call "
            "`plan.apply(model)` after `to_empty()` and the model's own init; nothing was "
            "written")


def _zero_all_(tensors: dict[str, torch.Tensor], written: list[str],
               fail: Callable[[str, Exception], PartialWriteError]) -> None:
    """Zero in place: one fused kernel for plain tensors, else tensor by tensor (which says
    exactly where a failure stops it); each name written is appended to ``written``."""
    items = list(tensors.values())
    if is_plain(items):
        try:
            with torch.no_grad():
                torch._foreach_zero_(items)
            written.extend(tensors)
            return
        except Exception:  # write one by one below
            logger.debug("fused zeroing failed; zeroing tensor by tensor", exc_info=True)
    for name, tensor in tensors.items():
        try:
            zero_tensor_(tensor)
        except Exception as exc:
            raise fail(name, exc) from exc
        written.append(name)


def _names(names: list[str], limit: int = 8) -> str:
    if not names:
        return "none"
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f", ... {len(names) - limit} more" if len(names) > limit else "")


def _named_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter of the model, tied ones too."""
    if not isinstance(model, nn.Module):
        raise NotAModuleError(f"a plan applies to an nn.Module, got {type(model).__name__}")
    return dict(model.named_parameters(remove_duplicate=False))


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


def resolve(plan: Plan, model: nn.Module, *, allow_tied: bool = False,
            named: dict[str, torch.Tensor] | None = None,
            buffers: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Map each planned FQN to the model's own tensor, or raise listing every problem.

    ``named`` is ``dict(model.named_parameters(remove_duplicate=False))`` and ``buffers``
    ``dict(model.named_buffers(remove_duplicate=False))`` when the caller already has them.
    """
    if not isinstance(model, nn.Module):
        raise NotAModuleError(f"a plan applies to an nn.Module, got {type(model).__name__}")
    if named is None:  # a caller that lists the parameters has already checked the model
        named = _named_params(model)
    found: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    reasons: dict[torch.dtype, str | None] = {}
    for entry in plan.entries:
        for fqn, shape in entry.params.items():
            hit = _lookup(named, fqn)
            # torch.nn.utils.prune leaves `{name}_orig` (a parameter) and a pre-hook; only
            # then is the module looked up
            if fqn.endswith("_orig") or _lookup(named, f"{fqn}_orig") is not None:
                pruning = _pruning_owner(model, fqn)
                if pruning is not None:
                    problem = pruning_problem(*pruning)
                    if problem is not None:
                        raise UnsupportedParameterError(problem)
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
            lazy = lazy_error({name: tensor}, "apply the plan")
            if lazy is not None:
                raise lazy
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
        _check_shared_storage(found, named, model, buffers)
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


def _check_shared_storage(found: dict[str, torch.Tensor], named: dict[str, torch.Tensor],
                          model: nn.Module,
                          buffers: dict[str, torch.Tensor] | None = None) -> None:
    """Refuse a target whose memory another parameter or buffer outside the plan also uses
    (a view, ``p.data = q.data[...]``): zeroing it would silently change that one too."""
    spans: dict[Any, list[tuple[int, int, str]]] = {}
    for name, tensor in found.items():
        span = byte_span(tensor)
        if span is not None:
            spans.setdefault(span[0], []).append((span[1], span[2], name))
    if not spans:
        return
    targets = {id(t) for t in found.values()}
    others = [(n, t, "parameter") for n, t in named.items() if n not in found]
    if buffers is None:
        buffers = dict(model.named_buffers(remove_duplicate=False))
    others += [(n, t, "buffer") for n, t in buffers.items() if t is not None]
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
    ends = [r[1] for r in ranges]
    plain = (torch.Tensor, nn.Parameter)
    bisect_right = bisect.bisect_right
    for other, tensor, kind in others:
        if id(tensor) in targets:
            continue  # the same tensor: _check_tied has decided about it
        if ranges and type(tensor) in plain:
            # the common case, decided by one pointer: a tensor whose first byte lies in no
            # target's storage shares none (a meta tensor's pointer is 0, in none)
            ptr = tensor.data_ptr()
            i = bisect_right(starts, ptr) - 1
            if i < 0 or ptr >= ends[i]:
                continue
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
        span = byte_span(tensor)
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
