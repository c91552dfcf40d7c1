"""How the report and the picture write numbers and shapes.

>>> format_shape((64, 3, 7, 7)), plural(2, "module"), numel((2, 3))
('64x3x7x7', '2 modules', 6)
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["format_shape", "plural", "numel"]


def numel(shape: Sequence[int]) -> int:
    """The number of elements of a tensor of ``shape``."""
    n = 1
    for d in shape:
        n *= d
    return n


def format_shape(shape: Sequence[int]) -> str:
    """A parameter shape as the table shows it: ``(64, 3, 7, 7)`` -> ``64x3x7x7``.

    >>> format_shape((64, 3, 7, 7)), format_shape((16,)), format_shape(())
    ('64x3x7x7', '16', 'scalar')
    """
    return "x".join(str(d) for d in shape) if shape else "scalar"


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, the noun in the plural unless the count is one.

    >>> plural(1, "module"), plural(0, "candidate"), plural(1_000, "parameter")
    ('1 module', '0 candidates', '1,000 parameters')
    """
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"
