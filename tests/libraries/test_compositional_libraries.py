"""Every real-library model of the suite, captured compositionally: the same graph and report.

For each model the never-silent walk builds (torchvision, timm, transformers, diffusers, from
small configs), the graph ``zero_init_pass`` captures by default (compositional: each
distinct repeated block exported once, its copies stitched in) must be the graph of a
whole-model capture (``compositional=False``) node for node (op, name, target, arguments,
``nn_module_stack`` paths, recorded shapes), and the pass must make the same plan and the
same rows. Models that symbolic tracing captures are not exported at all, so for them the
two are trivially one; the test counts how many were exported and asserts the composition
really ran on most of them (blocks stitched, not a fallback to the whole model).
"""
from __future__ import annotations

import warnings

import pytest
import torch

from zeta_fx import zero_init_pass
from zeta_fx.capture import capture
from zeta_fx.capture.blocks import STUB
from zeta_fx.capture.stitch import META_KEY
from zeta_fx.capture.front import capture_kwargs

from test_compositional import graph_signature, rows
from test_never_silent import MODELS

EXPORTED: dict[str, int] = {}  # exported model -> how many block copies were stitched in


def _exported(gm) -> bool:
    return any(n.op == "call_function" and hasattr(n.target, "_schema") for n in gm.graph.nodes)


@pytest.mark.parametrize("name", list(MODELS))
def test_compositional_capture_gives_the_whole_model_graph_and_report(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, args, kwargs = MODELS[name]()
        kw, _ = capture_kwargs(model, args, kwargs)
        whole = capture(model, example_inputs=args, example_kwargs=kw, compositional=False)
        if not _exported(whole):
            pytest.skip("captured symbolically: no export, nothing composed")
        parts = capture(model, example_inputs=args, example_kwargs=kw, compositional=True)
        assert not any(n.target is STUB for n in parts.graph.nodes)
        assert graph_signature(parts) == graph_signature(whole)
        reports = [zero_init_pass(model, dry_run=True, example_inputs=args,
                                  example_kwargs=kwargs, compositional=c) for c in (False, True)]
    assert rows(reports[1]) == rows(reports[0])
    EXPORTED[name] = len(parts.meta.get(META_KEY, {}))


def test_most_exported_models_were_composed():
    if len(EXPORTED) < 20:
        pytest.skip("run with the whole file: the per-model tests fill the table")
    composed = [n for n, copies in EXPORTED.items() if copies]
    assert len(composed) >= 0.8 * len(EXPORTED), sorted(set(EXPORTED) - set(composed))
