"""The command line covers the library (issue 21): ``plan --init``, ``--forward-kw``,
``--input-kw`` and ``zeta-fx gate``, and their errors (one line, exit code 2)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from zeta_fx.cli import main

ME = __name__
BUILT: list[nn.Module] = []


class Masked(nn.Module):
    """A forward with a keyword tensor and a literal flag that decides the path."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x, mask=None, scale_by_mask: bool = True):
        h = x + self.fc2(torch.relu(self.fc1(x)))
        if scale_by_mask:
            h = h * mask.unsqueeze(-1)
        return self.head(h)


def masked() -> nn.Module:
    model = Masked()
    BUILT.append(model)
    return model


def tiny_llama() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("spec, action", [
    ("zero", "zero"),
    ("scaled_normal(std=0.02)", "N(0, 0.01414)"),
    ("scaled_normal", "N(0, 0.01414)"),
    ("fixup()", "zero"),
])
def test_plan_init_spec(capsys, spec, action):
    code, out, _ = run(capsys, "plan", "zeta_fx.models:GPT", "--kw", "n_layer=1", "--init", spec,
                       "--seed", "3", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["dry_run"] and data["touched"][0]["action"] == action
    assert data["init"] == {"zero": "zero", "fixup()": "fixup()"}.get(spec,
                                                                      "scaled_normal(std=0.02)")


@pytest.mark.parametrize("spec, message", [
    ("fixp()", "did you mean 'fixup'?"),
    ("scaled_normal(std=-1)", "finite std > 0"),
    ("scaled_normal(std=x)", "arguments must be Python literals"),
    ("zero()", "zero takes no arguments"),
])
def test_plan_bad_init_is_one_line(capsys, spec, message):
    code, out, err = run(capsys, "plan", "zeta_fx.models:GPT", "--init", spec)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err


def test_forward_kw_and_input_kw_reach_the_forward(capsys):
    BUILT.clear()
    code, out, err = run(capsys, "plan", f"{ME}:masked", "--input-shape", "2,8",
                         "--input-kw", "mask=2:float32", "--forward-kw", "scale_by_mask=True",
                         "--format", "json")
    assert code == 0, err
    assert json.loads(out)["modules"] == ["fc2"]
    # without the mask the forward fails: the error names the command-line flags
    code, out, err = run(capsys, "plan", f"{ME}:masked", "--input-shape", "2,8",
                         "--forward-kw", "scale_by_mask=True")
    assert code == 2 and "--input-kw" in err
    # the literal flag chooses the path: with it off, no mask is needed
    code, out, err = run(capsys, "plan", f"{ME}:masked", "--input-shape", "2,8",
                         "--forward-kw", "scale_by_mask=False", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["modules"] == ["fc2"]


def test_llama_from_the_command_line_with_an_attention_mask(capsys):
    code, out, err = run(capsys, "plan", f"{ME}:tiny_llama", "--input-shape", "1,8",
                         "--dtype", "int64", "--input-kw", "attention_mask=1,8:int64",
                         "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["modules"] == [f"model.layers.{i}.{m}" for i in range(2)
                               for m in ("self_attn.o_proj", "mlp.down_proj")]
    assert any("use_cache=False" in note for note in data["notes"])


@pytest.mark.parametrize("argv, message", [
    (["--forward-kw", "use_cache"], "--forward-kw 'use_cache': expected name=value"),
    (["--input-kw", "mask"], "expected NAME=SHAPE[:DTYPE]"),
    (["--input-kw", "mask=a,b"], "the shape 'a,b' is not comma-separated"),
    (["--input-kw", "mask=2:int9"], "dtype 'int9' is not one of"),
    (["--input-kw", "mask=2", "--forward-kw", "mask=None"], "'mask' is already given"),
])
def test_forward_argument_errors_are_one_line(capsys, argv, message):
    code, out, err = run(capsys, "plan", f"{ME}:masked", "--input-shape", "2,8", *argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err


def test_gate_prints_where_gates_go_and_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    BUILT.clear()
    code, out, err = run(capsys, "gate", f"{ME}:masked", "--input-shape", "2,8",
                         "--input-kw", "mask=2", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert [g["name"] for g in data["gates"]] == ["residual_gate"] or \
        [g["layers"] for g in data["gates"]] == [["fc2"]]
    assert "nothing was written" in err
    model = BUILT[-1]
    assert not any("gate" in name for name, _ in model.named_parameters())
    assert list(tmp_path.iterdir()) == []


def test_gate_table_on_torchvision(capsys):
    pytest.importorskip("torchvision")
    code, out, _ = run(capsys, "gate", "torchvision.models:resnet18", "--rule", "zero_init_residual")
    assert code == 0
    assert "layer1.0.gate_bn2" in out and "gated 8 residual joins" in out


def test_gate_unknown_rule_is_one_line(capsys):
    code, out, err = run(capsys, "gate", "zeta_fx.models:GPT", "--rule", "zero_init_lst")
    assert code == 2 and "Did you mean 'zero_init_last'?" in err


@pytest.mark.slow  # transformers' Llama through the command line
def test_gate_on_llama_without_use_cache_says_to_pass_it(capsys):
    """gate_residuals captures with the user's arguments only (its graph is called with
    them): the error names the cache argument and the flag that fixes it; with the flag,
    the gates are listed."""
    code, out, err = run(capsys, "gate", f"{ME}:tiny_llama", "--input-shape", "1,8",
                         "--dtype", "int64")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "Caused by the forward argument `" in err and "--forward-kw use_cache=False" in err
    code, out, err = run(capsys, "gate", f"{ME}:tiny_llama", "--input-shape", "1,8",
                         "--dtype", "int64", "--forward-kw", "use_cache=False")
    assert code == 0, err
    assert "model.layers.0.gate_self_attn" in out and "model.layers.1.gate_mlp" in out


def test_gate_previews_the_in_place_default_and_the_graph_rewrite(capsys):
    """SE-ResNet's squeeze-excite joins need a gate at the merge: the default preview lists
    them as left alone, --graph gates them."""
    code, out, _ = run(capsys, "gate", "zeta_fx.models:SEResNet", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["gates"] == [] and sum("graph=True" in s["reason"] for s in data["skipped"]) == 6
    code, out, _ = run(capsys, "gate", "zeta_fx.models:SEResNet", "--graph", "--format", "json")
    assert code == 0 and len(json.loads(out)["gates"]) == 6
