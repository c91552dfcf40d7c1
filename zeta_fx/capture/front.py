"""The entrance of every verb that traces: check the model, see through its wrappers, and
capture it with the right keyword arguments.

``zero_init_pass``/``init_pass`` and ``gate_residuals`` all start here, so all refuse the
same inputs the same way, before anything is traced.

>>> from torch import nn
>>> captured = capture_model(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)))
>>> [n.op for n in captured.gm.graph.nodes]
['placeholder', 'call_module', 'call_module', 'output']
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from torch import fx, nn

from zeta_fx.capture.methods import LeafSpec, capture
from zeta_fx.capture.wrappers import see_through
from zeta_fx.errors import (CaptureError, ExampleInputsError, NotAModuleError,
                            UnknownModuleError)
from zeta_fx.tensors import lazy_error

__all__ = ["Captured", "capture_model", "check_runnable", "check_module_names", "nearest_names",
           "capture_kwargs", "forward_argument_cause"]


@dataclass(frozen=True)
class Captured:
    """The model with its wrappers removed, its graph, and the keyword arguments it was
    captured with (the user's, plus ``use_cache=False`` where its forward takes it) with
    what the report should say about them."""

    model: nn.Module
    gm: fx.GraphModule
    example_kwargs: dict[str, Any] | None = None
    notes: tuple[str, ...] = field(default=())


def capture_model(model: Any, *, verb: str = "zero_init_pass",
                  example_inputs: tuple[Any, ...] | None = None,
                  example_kwargs: dict[str, Any] | None = None,
                  leaf_modules: Iterable[LeafSpec] = (),
                  within: Iterable[tuple[str, str]] = (),
                  method: str = "auto", use_cache_off: bool = True,
                  runs: bool = False, compositional: bool = True) -> Captured:
    """Check ``model`` and capture it: the one entrance of every verb that traces.

    Refuses, before anything is traced: a non-module, a sharded model (plan on the meta
    device instead), uninitialised lazy parameters, scoping names that match no module
    (``within``: ``(where given, FQN prefix)`` pairs). DDP and ``torch.compile`` wrappers
    are seen through here, once: FQNs are the inner model's own. ``use_cache_off``: capture
    a forward that takes ``use_cache`` with ``use_cache=False`` unless the caller passed it
    (:func:`capture_kwargs`). ``runs``: the model will be run on example inputs
    (``verify=True``), so it must hold values (:func:`check_runnable`). ``compositional``:
    an export captures each distinct repeated block once and stitches the copies in
    (:mod:`zeta_fx.capture.blocks`): the same graph, faster; False exports the whole model.
    """
    if not isinstance(model, nn.Module):
        raise NotAModuleError(
            f"{verb} expects an nn.Module or a torch.fx.GraphModule, got "
            f"{type(model).__module__}.{type(model).__qualname__}; pass the model itself")
    model, params = see_through(model)
    if runs:
        check_runnable(model)
    lazy = lazy_error(params, f"run {verb}")
    if lazy is not None:
        raise lazy
    leaf_modules = tuple(leaf_modules)
    check_module_names(model, leaf_modules=leaf_modules, within=list(within))
    notes: tuple[str, ...] = ()
    if use_cache_off:  # not for a graph rewrite: its inputs are the capture's own
        example_kwargs, notes = capture_kwargs(model, example_inputs, example_kwargs)
    try:
        gm = capture(model, leaf_modules=leaf_modules, example_inputs=example_inputs,
                     example_kwargs=example_kwargs, method=method,
                     compositional=compositional)
    except CaptureError as exc:
        cause = forward_argument_cause(model, str(exc), example_kwargs)
        if cause is None or type(exc) is not CaptureError:
            raise
        raise CaptureError(f"{exc} {cause}") from exc
    return Captured(model, gm, example_kwargs, notes)


def capture_kwargs(model: nn.Module, example_inputs: tuple[Any, ...] | None,
                   example_kwargs: dict[str, Any] | None
                   ) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    """The keyword arguments to capture ``model`` with, and a note for the report.

    A forward that takes ``use_cache`` (Hugging Face's causal LMs) returns a cache object
    that no capture can follow; a cache does not change which layers sit where, so the
    model is captured with ``use_cache=False`` unless the caller passed it. Only with
    example inputs: a capture without them never runs the forward.

    >>> import torch
    >>> from torch import nn
    >>> class LM(nn.Module):
    ...     def forward(self, ids, use_cache=None):
    ...         return ids
    >>> capture_kwargs(LM(), (torch.zeros(1),), None)[0]
    {'use_cache': False}
    >>> capture_kwargs(LM(), (torch.zeros(1), True), None)
    (None, ())
    """
    if isinstance(model, fx.GraphModule) or (example_inputs is None and not example_kwargs):
        return example_kwargs, ()
    try:
        signature = inspect.signature(model.forward)
        passed = signature.bind_partial(*(example_inputs or ()), **(example_kwargs or {}))
    except (TypeError, ValueError):
        return example_kwargs, ()  # capture itself will say what does not fit
    if "use_cache" not in signature.parameters or "use_cache" in passed.arguments:
        return example_kwargs, ()
    note = (f"captured with use_cache=False: {type(model).__name__}.forward takes use_cache "
            "and it was not passed; a cache does not change which layers sit where (pass "
            "example_kwargs={'use_cache': ...} to choose)")
    return {**(example_kwargs or {}), "use_cache": False}, (note,)


def nearest_names(name: str, model: nn.Module, n: int = 3) -> list[str]:
    """The module FQNs of ``model`` nearest to ``name`` (for an error message)."""
    names = [fqn for fqn, _ in model.named_modules() if fqn]
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
    if not close:  # the name's parent's children, then the top level
        parent = name.rpartition(".")[0]
        close = [f for f in names if f.rpartition(".")[0] == parent][:n] or \
            [f for f in names if "." not in f][:n]
    return close


def check_module_names(model: nn.Module, *, leaf_modules: Iterable[LeafSpec] = (),
                       within: Iterable[tuple[str, str]] = (),
                       focus: Iterable[str] = (), leaf_label: str = "leaf_modules",
                       focus_label: str = "focus") -> None:
    """Refuse every FQN or class that would scope the pass but matches no module of
    ``model``: a typo there would silently change nothing. ``within`` holds (where it was
    given, FQN prefix) pairs; ``focus`` FQN prefixes of a picture. ``leaf_label`` and
    ``focus_label`` say how the caller spelt the option (``--leaf`` on the command line).

    >>> from torch import nn
    >>> check_module_names(nn.Sequential(nn.Linear(2, 2)), leaf_modules=["1"])
    Traceback (most recent call last):
    ...
    zeta_fx.errors.UnknownModuleError: leaf_modules: '1' names no module of Sequential; nearest: '0'. Give a module FQN (model.named_modules() lists them), 'prefix.*' for every module under prefix, or a module class; nothing was traced or written
    """
    leaf_modules, within, focus = list(leaf_modules), list(within), list(focus)
    if not (leaf_modules or within or focus):  # nothing names a module: nothing to refuse
        return
    modules = [(fqn, m) for fqn, m in model.named_modules()]
    names = [fqn for fqn, _ in modules if fqn]
    # a graph module from torch.export keeps FQNs in its parameters' names only
    names += sorted({fqn.rpartition(".")[0] for fqn, _ in
                     [*model.named_parameters(), *model.named_buffers()]} - set(names) - {""})
    owner = type(model).__name__
    advice = ("Give a module FQN (model.named_modules() lists them), 'prefix.*' for every "
              "module under prefix, or a module class; nothing was traced or written")

    def refuse(where: str, name: str, nearest: list[str], scope: bool = False) -> None:
        listed = ", ".join(map(repr, nearest)) if nearest else "(the model has no submodules)"
        what = ("Give the FQN of a module (model.named_modules() lists them); everything "
                "under it is in scope; nothing was traced or written") if scope else advice
        raise UnknownModuleError(f"{where}: {name!r} names no module of {owner}; nearest: "
                                 f"{listed}. {what}")

    for leaf in leaf_modules:
        if isinstance(leaf, type):
            if not any(isinstance(m, leaf) for _, m in modules):
                kinds = sorted({type(m).__name__ for _, m in modules})
                close = difflib.get_close_matches(leaf.__name__, kinds, n=3, cutoff=0.3)
                refuse(leaf_label, leaf.__name__, close or kinds[:3])
        elif isinstance(leaf, str):
            prefix = leaf[:-1] if leaf.endswith(".*") else None
            if not any(n == leaf or (prefix is not None and n.startswith(prefix))
                       for n in names):
                refuse(leaf_label, leaf, nearest_names(leaf.removesuffix(".*"), model))
    for where, scope in within:
        if not any(n == scope or n.startswith(scope + ".") for n in names):
            refuse(where, scope, nearest_names(scope, model), scope=True)
    for prefix in focus:
        prefix = prefix.strip(".")
        if prefix and not any(n == prefix or n.startswith(prefix + ".") for n in names):
            refuse(focus_label, prefix, nearest_names(prefix, model), scope=True)


_GENERIC = {"Optional", "Union", "Any", "List", "Dict", "Tuple", "Callable", "None", "Unpack",
            "NoneType", "Module"}


def forward_argument_cause(model: nn.Module, message: str,
                           example_kwargs: dict[str, Any] | None) -> str | None:
    """The forward argument a capture failure is about, in words, or None: an argument
    named in ``message``, or one whose annotated type the message names (a
    ``DynamicCache`` found in the output is ``past_key_values: Cache``).

    >>> from torch import nn
    >>> class Cache: ...
    >>> class LM(nn.Module):
    ...     def forward(self, ids, past_key_values: Cache | None = None, use_cache=None):
    ...         return ids
    >>> forward_argument_cause(LM(), "Found DynamicCache in output", {"use_cache": True})
    'Caused by the forward argument `past_key_values` (Cache | None): the model was called with use_cache=True, which makes it build and return a cache that capture cannot follow; pass example_kwargs={..., "use_cache": False} (on the command line: --forward-kw use_cache=False); a cache does not change which layers sit where.'
    """
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", message))
    for name, param in params.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = param.annotation
        shown = "" if annotation is inspect.Parameter.empty else (
            annotation if isinstance(annotation, str) else
            getattr(annotation, "__name__", None) or str(annotation))
        types = {t for t in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", str(shown))
                 if t[:1].isupper() and t not in _GENERIC and not t.endswith("Tensor")}
        named = name in words and len(name) > 2
        typed = any(w.endswith(t) for w in words for t in types)
        if not (named or typed):
            continue
        what = f" ({shown})" if shown else ""
        use_cache = (example_kwargs or {}).get("use_cache", "unset")
        if typed and "Cache" in str(shown) and "use_cache" in params and use_cache is not False:
            called = ("was called with use_cache=True" if use_cache is True else
                      "was called without use_cache (its config turns the cache on)")
            return (f"Caused by the forward argument `{name}`{what}: the model {called}, "
                    "which makes it build and return a cache that capture cannot follow; "
                    "pass example_kwargs={..., \"use_cache\": False} (on the command line: "
                    "--forward-kw use_cache=False); a cache does not change which layers sit "
                    "where.")
        return (f"Caused by the forward argument `{name}`{what} of "
                f"{type(model).__name__}.forward: pass a value for it in example_kwargs "
                "that the capture can follow (a tensor, or None/False to turn it off).")
    return None


def check_runnable(model: nn.Module) -> None:
    """Refuse, before anything is traced, a model that will be run (``verify=True``) but
    cannot run here.

    >>> import torch
    >>> with torch.device("meta"):
    ...     check_runnable(nn.Linear(2, 2))
    Traceback (most recent call last):
    ...
    zeta_fx.errors.ExampleInputsError: verify=True runs a forward pass, but `weight` is on the meta device ...
    """
    meta = next((n for n, p in model.named_parameters() if p.is_meta), None)
    if meta is not None:
        raise ExampleInputsError(
            f"verify=True runs a forward pass, but `{meta}` is on the meta device and holds no "
            "values. Plan on the meta device with dry_run=True and verify after "
            "materialising: `zero_init_pass(model, rule, verify=True, example_inputs=...)` on "
            "the real model; nothing was written")
