"""Smoke test of ``benchmarks/run.py``: it imports and runs one small case of each kind.

No timing is asserted (wall-clock limits do not belong in tests); the figures themselves
come from ``python benchmarks/run.py`` and go into the README.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from zeta_fx.models import GPT

pytestmark = pytest.mark.slow  # runs the benchmark's cases

ROOT = Path(__file__).resolve().parents[2]


def _load_benchmarks():
    spec = importlib.util.spec_from_file_location("zeta_fx_benchmarks", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_benchmark_cases_run_on_small_models() -> None:
    bench = _load_benchmarks()
    t_pass, t_trace = bench.pass_vs_trace(GPT(n_layer=2), repeats=1)
    assert t_pass > 0 and t_trace > 0

    net = bench.generated_net(5)
    assert len(net.units) == 5

    model = bench.Llama(n_layer=2, dim=64, hidden=128, vocab=100)
    t_apply, t_bare, elements = bench.apply_vs_zeros(model, repeats=1)
    assert elements == 2 * (64 * 64 + 128 * 64)            # o_proj and down_proj per layer
    assert not model.layers[1].mlp.down_proj.weight.any()   # the last timed run was zeros_

    meta = bench.meta_plan(n_layer=2, dim=64, hidden=128)
    assert meta["modules"] == 4 and meta["peak_rss"] > 0 and meta["seconds"] > 0

    rows = [bench.Row("pass / symbolic_trace: GPT-2", f"{t_pass / t_trace:.3f}", "<= 0.10",
                      t_pass / t_trace <= 0.10)]
    text = bench.table(rows)
    assert text.splitlines()[0].startswith("| benchmark")
    assert "GPT-2" in text


def test_llama_block_is_zeroed_where_expected_on_meta() -> None:
    bench = _load_benchmarks()
    with torch.device("meta"):
        model = bench.Llama(n_layer=2, dim=64, hidden=128, vocab=100)
    from zeta_fx import zero_init_pass

    report = zero_init_pass(model, dry_run=True)
    assert report.modules == ["layers.0.self_attn.o_proj", "layers.0.mlp.down_proj",
                              "layers.1.self_attn.o_proj", "layers.1.mlp.down_proj"]
    assert all(p.is_meta for p in model.parameters())


def test_compositional_benchmark_cases_run_on_small_models() -> None:
    _load_benchmarks()  # `run` is what compositional.py imports its timing from
    sys.modules.setdefault("run", sys.modules["zeta_fx_benchmarks"])
    spec = importlib.util.spec_from_file_location(
        "zeta_fx_compositional_bench", ROOT / "benchmarks" / "compositional.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = bench.hf_llama(2, hidden=64)
    bench._pass(model)
    bench._export(model)
    d = bench.deepseek(1, compositional=True)
    assert d["modules"] == 2 and d["peak_rss"] > 0  # the one dense layer: o_proj, down_proj


def test_families_benchmark_measures_one_family() -> None:
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("zeta_fx_families",
                                                  ROOT / "benchmarks" / "families.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    table = module.families()
    assert {"qwen3_next", "unet3d", "lumina2", "phimoe", "hidream", "gpt2"} <= set(table)
    method, alone, both = module.measure(table["gpt2"], repeats=1)
    assert method == "export" and alone > 0 and both > 0
