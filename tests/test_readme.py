"""The README's custom-rule example runs as written and does what the README says."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import torch

from zeta_fx import zero_init_pass
from zeta_fx.models import GPT

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def readme_block(marker: str) -> str:
    m = re.search(rf"<!-- {marker} -->\n```python\n(.*?)\n```", README, re.S)
    assert m, f"no python block after <!-- {marker} --> in README.md"
    return m.group(1)


def test_custom_rule_block_runs_and_prints_what_it_claims():
    code = readme_block("custom-rule")
    namespace: dict = {"__name__": "readme_custom_rule"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md:custom-rule", "exec"), namespace)
    claimed = re.search(r"print\(report\.modules\)\s*#\s*(.*)", code).group(1)
    assert out.getvalue().strip() == claimed == "['h.0.attn.c_proj', 'h.1.attn.c_proj']"


def test_custom_rule_zeroes_attention_branches_only():
    namespace: dict = {"__name__": "readme_custom_rule"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(readme_block("custom-rule"), "README.md:custom-rule", "exec"), namespace)
    rule = namespace["AttentionBranchLast"]()
    torch.manual_seed(0)
    model = GPT(n_layer=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = zero_init_pass(model, rule=rule)
    expected = {f"h.{i}.attn.c_proj.{p}" for i in range(3) for p in ("weight", "bias")}
    assert set(report.params) == expected
    after = model.state_dict()
    assert all(not after[k].any() for k in expected)
    assert all(torch.equal(before[k], after[k]) for k in before if k not in expected)
    x = torch.randn(2, 8, 32)
    for block in model.h:  # each attention branch now adds exactly zero; the MLP does not
        assert torch.equal(block.attn(block.ln_1(x)), torch.zeros_like(x))
        assert block.mlp(block.ln_2(x)).abs().sum() > 0
    assert all(row["position"].startswith("attention branch into") for row in report.touched)


def test_tour_shows_the_demo_output_as_it_is(capsys):
    from zeta_fx.cli import main

    m = re.search(r"<!-- demo-output -->\n```text\n(.*?)\n```", README, re.S)
    assert m, "no demo output block in README.md"
    assert main(["demo", "se_resnet"]) == 0
    assert capsys.readouterr().out.rstrip() == m.group(1)


def test_tour_picture_is_committed_and_shown():
    docs = Path(__file__).resolve().parents[1] / "docs" / "resnet50.svg"
    assert "](docs/resnet50.svg)" in README
    text = docs.read_text()
    assert "<svg" in text and text.count('class="node zeroed"') == 2  # layer1.0/1.1 bn3
