"""Hugging Face models as users call them (issue 21): a causal LM captured without the user
passing ``use_cache`` works (captured with ``use_cache=False``, and the report says so); a
capture that still fails names the forward argument that caused it. Models are built from
small configs; no weights are downloaded."""
from __future__ import annotations

import pytest
import torch

from zeta_fx import zero_init_pass
from zeta_fx.errors import CaptureError

transformers = pytest.importorskip("transformers")


def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config)


IDS = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
LAST = [f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.o_proj", "mlp.down_proj")]


def test_llama_planned_without_use_cache_works_and_the_report_says_so():
    model = llama()
    report = zero_init_pass(model, example_inputs=(IDS,), verify=True)
    assert report.modules == LAST
    assert all(row["verified"] for row in report.touched)
    assert len(report.notes) == 1 and "use_cache=False" in report.notes[0]
    assert "note: captured with use_cache=False" in report.table()
    assert report.to_dict()["notes"] == report.notes
    # the model itself still uses its cache as before
    assert model.config.use_cache
    out = model(IDS)
    assert out.past_key_values is not None


def test_use_cache_passed_by_the_user_is_kept_and_no_note():
    report = zero_init_pass(llama(), example_inputs=(IDS,), example_kwargs={"use_cache": False},
                            dry_run=True)
    assert report.modules == LAST and report.notes == []


def test_use_cache_true_fails_naming_the_argument_and_what_to_do():
    model = llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CaptureError) as info:
        zero_init_pass(model, example_inputs=(IDS,), example_kwargs={"use_cache": True})
    message = str(info.value)
    assert "Caused by the forward argument `" in message and "Cache" in message
    assert '"use_cache": False' in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_rows_and_picture_under_export_name_modules_and_ops_not_overloads():
    """Captured with torch.export (aten overloads): the picture's op boxes say ``add``,
    ``linear``, never the overload names ``default``/``Tensor``; a merge left alone names
    the module whose forward holds it (from ``nn_module_stack``), not ``-``."""
    report = zero_init_pass(llama(), example_inputs=(IDS,), dry_run=True)
    words = {word for node in report.picture().nodes if node.kind != "note"
             for line in node.lines for word in line.replace("→", " ").replace("·", " ").split()}
    assert not words & {"default", "Tensor", "Tensor_Scalar", "Scalar", "int", "dim"}, words
    assert {"linear", "transpose"} <= words
    rows = [line for line in report.table().splitlines()
            if line.startswith("add_") and "parameter-free" in line]
    assert rows and all(" in model.layers." in line and ".self_attn " in line for line in rows)
