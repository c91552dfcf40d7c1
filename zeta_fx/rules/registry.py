"""The rule registry: rule names, each with the factory that builds the rule, and the names
other libraries give the same recipes.

It knows nothing of :class:`~zeta_fx.rules.base.Rule`: it sits below it, so that a rule's
``|`` with a name (``ResidualBranchLast() | "output_layer"``) resolves the name here without
an import cycle. The built-in rules are registered by ``zeta_fx/rules/__init__.py``.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable

from zeta_fx.errors import UnknownRuleError

__all__ = ["register_rule", "list_rules", "rule_factory", "ALIASES", "UNNAMED"]

# The name of a rule class that sets none (``Rule.name``): such a class cannot be registered.
UNNAMED = "rule"

# A Rule subclass, or a function returning a rule (this module does not import Rule).
RuleFactory = Callable[..., Any]

_REGISTRY: dict[str, RuleFactory] = {}

# Names other libraries give the same recipe: timm's ``zero_init_last`` and torchvision's
# ``zero_init_residual`` zero the last layer (or norm) of each residual branch.
ALIASES: dict[str, str] = {
    "zero_init_last": "residual_branch_last",
    "zero_init_residual": "residual_branch_last",
}


def register_rule(factory: RuleFactory) -> RuleFactory:
    r"""Decorator: make a rule class, or a function returning a rule, usable by name.

    The name is the class's ``name`` (or the function's ``__name__``); the one-line
    description, shown by ``zeta-fx rules``, is the class's ``description`` (or the first
    line of the function's docstring). :func:`get_rule` passes options through, the way
    timm's ``create_model`` does.

    >>> from zeta_fx.rules import ByName, get_rule
    >>> @register_rule
    ... def attention_out(**options):
    ...     '''the attention output projections (by name)'''
    ...     return ByName("*.attn.c_proj", **options)
    >>> list_rules()["attention_out"]
    'the attention output projections (by name)'
    >>> get_rule("attention_out", within="h.0").name
    "ByName('*.attn.c_proj')[within='h.0']"
    >>> del _REGISTRY["attention_out"]
    """
    if not callable(factory):
        raise TypeError(f"register_rule decorates a Rule subclass or a function returning a "
                        f"rule, got {type(factory).__name__}")
    name = factory.name if isinstance(factory, type) else factory.__name__
    if not isinstance(name, str) or not name or name == UNNAMED:
        raise ValueError(f"{factory!r} has no rule name: set the class attribute `name`")
    _REGISTRY[name] = factory
    return factory


def _description(factory: RuleFactory) -> str:
    if isinstance(factory, type):
        return factory.description
    return ((factory.__doc__ or "").strip().splitlines() or [""])[0]


def list_rules() -> dict[str, str]:
    """Rule names and their one-line descriptions, in registration order."""
    return {name: _description(f) for name, f in _REGISTRY.items()}


def rule_factory(name: str) -> RuleFactory:
    """The factory registered under ``name`` or an alias of it; :class:`UnknownRuleError`,
    with the closest name and every valid one, where there is none."""
    factory = _REGISTRY.get(name) or _REGISTRY.get(ALIASES.get(name, ""))
    if factory is None:
        names = sorted(_REGISTRY)
        aliases = sorted(a for a, target in ALIASES.items() if target in _REGISTRY)
        close = difflib.get_close_matches(name, names + aliases, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        also = f" (aliases: {', '.join(aliases)})" if aliases else ""
        raise UnknownRuleError(f"unknown rule {name!r}.{hint} Valid rules: "
                               f"{', '.join(names)}{also}")
    return factory
