"""The walk: follow the user's `model` from `zero_init_pass` through the calls that pass it
on. A reader meets each stage once, top to bottom (issue 19): at most 10 stops, and no call
back into a stage already left (wrappers are seen through once, at capture; apply is
entered once). Measured by profiling a real call, not by reading the source."""
from __future__ import annotations

import os
import sys

import torch

import zeta_fx
from zeta_fx.models import GPT

PACKAGE = os.path.dirname(zeta_fx.__file__)
# Modules every stage may use: they hold no stage of the pipeline.
SHARED = ("zeta_fx.errors", "zeta_fx.tensors", "zeta_fx.words", "zeta_fx.snapshot",
          "zeta_fx.utils", "zeta_fx.semantics")


def stage(module: str) -> str:
    """``zeta_fx.capture.front`` -> ``capture``; ``zeta_fx.api`` -> ``api``."""
    return module.split(".")[1]


def walk(call) -> tuple[list[tuple[int, str, str]], list[str]]:
    """Run ``call(model)`` under a profiler; return the module entries that receive the
    model (depth, module, function) and the calls back into a stage already left."""
    model = GPT(n_layer=2)
    entries: list[tuple[int, str, str]] = []
    climbs: list[str] = []
    stack: list[tuple[object, str]] = []
    seen_frames: set[int] = set()
    alive: list[object] = []  # frames seen, kept so that their ids are not reused
    left: set[str] = set()

    def profile(frame, event, arg):
        if event == "return":
            if stack and stack[-1][0] is frame:
                _, mod = stack.pop()
                if not stack or stage(stack[-1][1]) != stage(mod):
                    left.add(stage(mod))
            return
        code = frame.f_code
        if event != "call" or not code.co_filename.startswith(PACKAGE) or \
                id(frame) in seen_frames:  # a generator resumed is no new call
            return
        module = frame.f_globals["__name__"]
        if module.startswith(SHARED) or module == "zeta_fx.models":  # the user's forward
            return
        names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        if not any(frame.f_locals.get(n) is model for n in names):
            return
        seen_frames.add(id(frame))
        alive.append(frame)
        caller = stack[-1][1] if stack else None
        if module != caller:
            entries.append((len(stack), module, code.co_name))
            here = {stage(m) for _, m in stack}
            if stage(module) in left and stage(module) not in here:
                climbs.append(f"{caller} -> {module}.{code.co_name}")
        stack.append((frame, module))

    sys.setprofile(profile)
    try:
        call(model)
    finally:
        sys.setprofile(None)
    return entries, climbs


def _stages(entries):
    out: list[str] = []
    for _, module, _ in entries:
        if not out or out[-1] != stage(module):
            out.append(stage(module))
    return out


def test_zero_init_pass_meets_each_stage_once():
    entries, climbs = walk(lambda m: zeta_fx.zero_init_pass(m))
    assert _stages(entries) == ["api", "capture", "analysis", "apply"], entries
    assert len(entries) <= 10, entries
    assert climbs == [], climbs


def test_verify_and_plan_apply_meet_each_stage_once():
    tokens = torch.randint(0, 10, (1, 8))
    entries, climbs = walk(lambda m: zeta_fx.zero_init_pass(m, verify=True,
                                                            example_inputs=(tokens,)))
    assert _stages(entries) == ["api", "capture", "analysis", "apply"], entries
    assert len(entries) <= 10 and climbs == [], (entries, climbs)
    plan = zeta_fx.zero_init_pass(GPT(n_layer=2), dry_run=True).plan
    entries, climbs = walk(lambda m: plan.apply(m))
    # the verb sees through DDP / torch.compile wrappers (capture's), then applies once
    assert _stages(entries) == ["api", "capture", "apply"], entries
    assert climbs == [], climbs
