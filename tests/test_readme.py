"""The README and the pages under docs/ it links: every python block runs as written, and
what the pages say (outputs, option tables, error messages) is what the code does."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import torch

from zeta_fx import zero_init_pass
from zeta_fx.models import GPT

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = {path.relative_to(ROOT).as_posix(): path.read_text()
         for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
README = "\n".join(PAGES.values())  # the README and its docs pages, searched as one text


def readme_block(marker: str) -> str:
    m = re.search(rf"<!-- {marker} -->\n```python\n(.*?)\n```", README, re.S)
    assert m, f"no python block after <!-- {marker} --> in README.md"
    return m.group(1)


def run_block(marker: str) -> tuple[dict, str, str]:
    """Run the README's python block after ``<!-- marker -->``: its names, what it printed,
    and its code."""
    code = readme_block(marker)
    namespace: dict = {"__name__": f"readme_{marker.replace('-', '_')}"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md:{marker}", "exec"), namespace)
    return namespace, out.getvalue(), code


def test_custom_rule_block_runs_and_prints_what_it_claims():
    _, printed, code = run_block("custom-rule")
    claimed = re.search(r"print\(report\.modules\)\s*#\s*(.*)", code).group(1)
    assert printed.strip() == claimed == "['h.0.attn.c_proj', 'h.1.attn.c_proj']"


def test_custom_rule_zeroes_attention_branches_only():
    namespace, _, _ = run_block("custom-rule")
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
    assert {row["rule"] for row in report.touched} == {"attention_branch_last"}


def test_gates_block_runs_and_prints_what_it_claims():
    namespace, printed, code = run_block("gates")
    claimed = [c.strip() for c in re.findall(r"print\(.*\)\s*#\s*(.*)", code)]
    assert printed.splitlines() == claimed == [
        "['h.0.gate_attn', 'h.0.gate_mlp', 'h.1.gate_attn', 'h.1.gate_mlp']", "True"]
    groups = namespace["optimizer"].param_groups
    assert [len(g["params"]) for g in groups][1] == 4 and groups[1]["weight_decay"] == 0.0
    model = namespace["model"]  # the user's own model, gated in place
    assert type(model).__name__ == "GPT"
    gates = {name for name, _ in model.named_parameters() if "gate" in name}
    assert gates == set(namespace["report"].names)


def test_tour_shows_the_demo_output_as_it_is(capsys):
    from zeta_fx.cli import main

    m = re.search(r"<!-- demo-output -->\n```text\n(.*?)\n```", README, re.S)
    assert m, "no demo output block in README.md"
    assert main(["demo", "se_resnet"]) == 0
    assert capsys.readouterr().out.rstrip() == m.group(1)


def test_tour_picture_is_committed_and_shown():
    docs = Path(__file__).resolve().parents[1] / "docs" / "resnet50.svg"
    assert "](resnet50.svg)" in PAGES["docs/usage.md"]
    text = docs.read_text()
    assert "<svg" in text and text.count('class="node zeroed"') == 2  # layer1.0/1.1 bn3


def _table_after(heading: str, first_header: str) -> list[list[str]]:
    """The rows of the first markdown table under ``heading`` whose header starts so."""
    section = README.split(heading, 1)[1]
    lines = section[section.index(f"| {first_header} |"):].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_cli_option_table_lists_every_option_of_plan_help():
    from zeta_fx.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    plan = sub.choices["plan"]
    options = {s for a in plan._actions for s in a.option_strings
               if s.startswith("--") and s != "--help"}
    documented = {m for row in _table_after("## Command line", "option")
                  for m in re.findall(r"`(--[a-z-]+)", row[0])}
    assert documented == options


def test_json_keys_documented_in_report_section_exist():
    from torch import nn

    rows = _table_after("## Report", "key")
    keys = {row[0].strip("`") for row in rows}
    assert keys == {"applied", "dry_run", "changed", "would_change", "notes"}
    data = zero_init_pass(nn.Sequential(nn.Linear(2, 2)), rule="output_layer",
                          dry_run=True).to_dict()
    assert keys <= set(data) and {"merge", "skip", "zero_at", "kept"} <= set(data["touched"][0])


class _DataDependent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else x


class _HasUntraceable(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = torch.nn.Linear(8, 8)
        self.gate = _DataDependent()

    def forward(self, x):
        return self.gate(self.block(x))


def test_capture_error_row_is_the_message_users_get():
    import pytest

    from zeta_fx import CaptureError

    (row,) = [r for r in _table_after("## Errors", "kind")
              if r[0] == "untraceable submodule, no example inputs"]
    with pytest.raises(CaptureError) as info:
        zero_init_pass(_HasUntraceable())
    got = str(info.value).replace("_DataDependent", "DataDependent")
    # " / " in the table is a line break of the message; "..." elides.
    assert row[2].replace(" / ", "\n") == got


def test_no_trace_block_runs_and_changes_nothing():
    namespace, printed, _ = run_block("no-trace")
    assert printed.strip() == "[]"
    assert namespace["report"].params  # the dry run planned something: it did run


def _python_blocks() -> list[tuple[str, int, str]]:
    return [(page, text[:m.start()].count("\n") + 1, m.group(1))
            for page, text in PAGES.items()
            for m in re.finditer(r"```python\n(.*?)\n```", text, re.S)]


@pytest.mark.parametrize("page, line, code", _python_blocks(),
                         ids=[f"{p}:{n}" for p, n, _ in _python_blocks()])
def test_every_python_block_runs(page, line, code, tmp_path, monkeypatch):
    """Every python block of the README and of docs/ runs as written, from a fresh
    namespace (a block that needs a name imports it)."""
    monkeypatch.chdir(tmp_path)
    if "torchvision" in code:
        pytest.importorskip("torchvision")
    if "transformers" in code:
        pytest.importorskip("transformers")
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, f"{page}:{line}", "exec"), {"__name__": "readme_block"})


def test_readme_is_short_and_links_every_docs_page():
    readme = PAGES["README.md"]
    assert len(readme) < 12_000
    for page in PAGES:
        if page.startswith("docs/"):
            assert f"]({page})" in readme, f"README does not link {page}"
