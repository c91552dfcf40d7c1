"""``gc_paused``: the verbs run with Python's cyclic garbage collector paused.

A pass allocates a graph's worth of objects that all stay alive until it returns (nodes,
their metadata, the index and the facts), so every generation-2 collection it triggers
walks a heap that only grows and frees nothing of it. Measured on this machine (2 cores),
garbage collector on against paused: a 32-layer Hugging Face Llama planned on the meta
device 0.88-1.10 s against 0.57-0.60 s; 400 residual MLP blocks, symbolic capture,
0.38 s against 0.17 s. Reference counting still frees everything acyclic as it goes; the
cycles made in the meantime are collected once the collector runs again, which it does as
soon as the outermost verb returns (or raises).

>>> import gc
>>> with gc_paused():
...     gc.isenabled()
False
>>> gc.isenabled()
True
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator

__all__ = ["gc_paused"]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block; a collector the caller had already
    paused stays paused, and nested blocks leave it to the outermost one."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
