"""Capture: an ``nn.Module`` in, a ``torch.fx.GraphModule`` out, with FQNs the model's own.

Takes the user's model (possibly wrapped in DDP or ``torch.compile``: unwrapped here, once)
and the example inputs, if any; refuses what cannot be traced (sharded, lazy, unknown module
names) before tracing; and hands on :class:`Captured`: the inner model, its graph, and the
keyword arguments it was captured with.

- :mod:`~zeta_fx.capture.front`: the checks and :func:`capture_model`, the entrance;
- :mod:`~zeta_fx.capture.methods`: ``auto`` / ``symbolic`` / ``export`` (non-strict
  ``torch.export``, mapped back to module FQNs) and the choice between them;
- :mod:`~zeta_fx.capture.concrete`: value-dependent Python followed on example inputs;
- :mod:`~zeta_fx.capture.tracer`: the symbolic tracer, its leaf policy, and leaving no trace
  on the model;
- :mod:`~zeta_fx.capture.wrappers`: DDP, ``torch.compile``, FSDP.
"""

from zeta_fx.capture.front import (Captured, capture_kwargs, capture_model, check_module_names,
                                   nearest_names)
from zeta_fx.capture.methods import CAPTURE_METHODS, LeafSpec, capture, export_capture
from zeta_fx.capture.tracer import ZetaTracer
from zeta_fx.snapshot import leave_no_trace
from zeta_fx.capture.wrappers import unwrap, writable

__all__ = ["Captured", "capture_model", "capture", "export_capture", "CAPTURE_METHODS",
           "LeafSpec", "ZetaTracer", "leave_no_trace", "unwrap", "writable", "check_module_names",
           "nearest_names", "capture_kwargs"]
