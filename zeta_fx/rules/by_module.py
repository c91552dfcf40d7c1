"""Rules that select modules by name, type or predicate rather than by graph position."""

from __future__ import annotations

import fnmatch
from typing import Callable, Iterable

from torch import nn

from zeta_fx.analysis.view import GraphView, owner_of
from zeta_fx.rules.base import Rule
from zeta_fx.rules.selection import Selection, Skipped, Target

__all__ = ["ByName", "ByType", "Where"]


class _ModuleRule(Rule):
    """Base of rules that pick modules by FQN or type rather than by graph position.

    A matching module's zeroable parameters are those a known layer type zeroes (a
    MultiheadAttention's ``out_proj``) or, for other modules, its own direct parameters; each
    graph node that uses them is listed. Containers without direct parameters are not
    matches themselves (their children are).
    """

    def matches(self, fqn: str, module: nn.Module) -> bool:
        raise NotImplementedError

    def what(self, fqn: str, module: nn.Module) -> str:
        raise NotImplementedError

    def find(self, view: GraphView) -> Selection:
        out = Selection()
        matched = False
        for fqn, module in view.root.named_modules():
            if not self.matches(fqn, module):
                continue
            matched = True
            names = view.ops.layer_params_of_module(module)
            if names is None:
                names = tuple(n for n, _ in module.named_parameters(recurse=False))
            prefix = f"{fqn}." if fqn else ""
            params = tuple(prefix + n for n in names if prefix + n in view.params)
            if not params:
                if any(True for _ in module.parameters(recurse=False)) or \
                        view.ops.layer_params_of_module(module) is not None:
                    out.skipped.append(Skipped("", fqn, f"{self.what(fqn, module)}, but "
                                               "has no weight or bias to zero", self.name))
                continue
            nodes = tuple(dict.fromkeys(n.name for p in params
                                        for n in view.consumers.get(p, ())))
            if not nodes:
                out.skipped.append(Skipped("", owner_of(params), f"{self.what(fqn, module)}, "
                                           "but is not used by the traced forward", self.name))
                continue
            out.targets.append(Target(owner_of(params), params, nodes,
                                      self.what(fqn, module), self.name))
        if not matched:
            out.skipped.append(Skipped("", "", f"no module of `{type(view.root).__name__}` "
                                       f"matches {self.name}", self.name))
        return out


class ByName(_ModuleRule):
    """Modules whose FQN matches any of the glob ``patterns`` (``fnmatch``: ``*``, ``?``).

    >>> import torch
    >>> from zeta_fx import zero_init_pass
    >>> from zeta_fx.models import GPT
    >>> zero_init_pass(GPT(n_layer=1), rule=ByName("*.c_proj")).modules
    ['h.0.attn.c_proj', 'h.0.mlp.c_proj']
    """

    def __init__(self, *patterns: str, within: str | None = None,
                 exclude: "str | Iterable[str]" = ()) -> None:
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(f"ByName needs one or more non-empty glob patterns, got "
                             f"{patterns!r}")
        self.patterns = patterns
        self.name = f"ByName({', '.join(map(repr, patterns))})"
        self.description = f"modules whose FQN matches {', '.join(patterns)}"
        super().__init__(within=within, exclude=exclude)

    def matches(self, fqn: str, module: nn.Module) -> bool:
        return bool(fqn) and any(fnmatch.fnmatchcase(fqn, p) for p in self.patterns)

    def what(self, fqn: str, module: nn.Module) -> str:
        hit = next(p for p in self.patterns if fnmatch.fnmatchcase(fqn, p))
        return f"name matches `{hit}`"


class ByType(_ModuleRule):
    """Modules that are instances of any of ``types`` (``nn.BatchNorm2d``, ...)."""

    def __init__(self, *types: type[nn.Module], within: str | None = None,
                 exclude: "str | Iterable[str]" = ()) -> None:
        if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
            raise TypeError(f"ByType needs one or more nn.Module subclasses, got {types!r}")
        self.types = types
        self.name = f"ByType({', '.join(t.__name__ for t in types)})"
        self.description = f"modules of type {', '.join(t.__name__ for t in types)}"
        super().__init__(within=within, exclude=exclude)

    def matches(self, fqn: str, module: nn.Module) -> bool:
        return isinstance(module, self.types)

    def what(self, fqn: str, module: nn.Module) -> str:
        return f"is a {type(module).__name__}"


class Where(_ModuleRule):
    """Modules for which ``predicate(fqn, module)`` is true."""

    def __init__(self, predicate: Callable[[str, nn.Module], bool],
                 description: str | None = None, *, within: str | None = None,
                 exclude: "str | Iterable[str]" = ()) -> None:
        if not callable(predicate):
            raise TypeError(f"Where needs a callable predicate(fqn, module), got "
                            f"{type(predicate).__name__}")
        self.predicate = predicate
        label = getattr(predicate, "__name__", "predicate")
        self.name = f"Where({label})"
        self.description = description or f"modules for which {label}(fqn, module) is true"
        super().__init__(within=within, exclude=exclude)

    def matches(self, fqn: str, module: nn.Module) -> bool:
        return bool(self.predicate(fqn, module))

    def what(self, fqn: str, module: nn.Module) -> str:
        return f"selected by {self.name}"
