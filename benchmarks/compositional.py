"""Compositional capture: what capturing each distinct block once saves (issue 22's table).

    python benchmarks/compositional.py           # about 3 minutes on 2 CPU cores
    python benchmarks/compositional.py --quick   # small models (a smoke run)

Every ratio is measured side by side in one process, the two calls interleaved and the
median of the repeats taken (``run.interleaved``); DeepSeek-V3 is planned in fresh
subprocesses (wall time of ``zero_init_pass`` and the peak resident memory of the process,
``VmHWM``, imports included), once compositionally and once whole.

- Hugging Face Llama (hidden 512) on the meta device with ``example_kwargs``: the pass
  (capture included, compositional by default) against a whole-model ``torch.export``, and
  against the same pass with ``compositional=False``; the pass at 32 layers over the
  pass at 8, and at 64 over 32 (growth: 2 is linear).
- 400 residual MLP blocks in an ``nn.Sequential``: the pass against ``symbolic_trace``.
  Symbolic capture is not compositional (only exports are): this row measures what is
  left.
- DeepSeek-V3 at its published config (61 layers, 256 routed experts) on the meta device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from torch import fx, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import Row, interleaved  # noqa: E402
from run import main as run_main  # noqa: E402
from zeta_fx import zero_init_pass  # noqa: E402


def hf_llama(n_layer: int, hidden: int = 512) -> nn.Module:
    import transformers

    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=hidden,
                                      intermediate_size=4 * hidden, num_hidden_layers=n_layer,
                                      num_attention_heads=8, num_key_value_heads=4)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        return transformers.LlamaForCausalLM(config)


def _ids() -> dict:
    return {"input_ids": torch.zeros(1, 64, dtype=torch.long, device="meta"),
            "use_cache": False}


def _pass(model: nn.Module, compositional: bool = True) -> None:
    zero_init_pass(model, dry_run=True, example_kwargs=_ids(), compositional=compositional)


def _export(model: nn.Module) -> None:
    torch.export.export(model, (), _ids(), strict=False)


class _MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


_DEEPSEEK_CHILD = r"""
import json, sys, time, warnings
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import torch, transformers
from run import peak_rss
from zeta_fx import zero_init_pass
config = transformers.DeepseekV3Config(
    vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
    num_hidden_layers={n_layer}, num_attention_heads=128, num_key_value_heads=128,
    n_shared_experts=1, n_routed_experts=256, routed_scaling_factor=2.5, kv_lora_rank=512,
    q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128, n_group=8,
    topk_group=4, num_experts_per_tok=8, first_k_dense_replace=3, norm_topk_prob=True,
    max_position_embeddings=4096, rms_norm_eps=1e-6, use_cache=False)
with warnings.catch_warnings(), torch.device("meta"):
    warnings.simplefilter("ignore")
    model = transformers.DeepseekV3Model(config)
ids = torch.zeros(1, 8, dtype=torch.long, device="meta")
start = time.perf_counter()
report = zero_init_pass(model, dry_run=True, example_kwargs={{"input_ids": ids}},
                        compositional={compositional})
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_rss": peak_rss(), "modules": len(report.modules)}}))
"""


def deepseek(n_layer: int, compositional: bool) -> dict:
    code = _DEEPSEEK_CHILD.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), n_layer=n_layer,
                                  compositional=compositional)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False, repeats: int | None = None) -> list[Row]:
    r = repeats or (3 if quick else 7)
    rows: list[Row] = []
    big, small = (8, 2) if quick else (32, 8)
    model = hf_llama(big)
    tp, te = interleaved(lambda: _pass(model), lambda: _export(model), r)
    rows.append(Row(f"pass / whole-model torch.export: HF Llama, {big} layers, meta",
                    f"{tp / te:.2f}", "<= 0.30", tp / te <= 0.30,
                    f"pass {tp:.2f} s (capture included), export {te:.2f} s"))
    tp2, tw = interleaved(lambda: _pass(model), lambda: _pass(model, False), r)
    rows.append(Row(f"pass / pass with compositional=False: HF Llama, {big} layers",
                    f"{tp2 / tw:.2f}", "-", None, f"{tp2:.2f} s against {tw:.2f} s"))
    few = hf_llama(small)
    tb, ts = interleaved(lambda: _pass(model), lambda: _pass(few), r)
    rows.append(Row(f"pass at {big} layers / pass at {small} layers: HF Llama",
                    f"{tb / ts:.2f}", "<= 1.5", tb / ts <= 1.5, f"{tb:.2f} s against {ts:.2f} s"))
    twice = hf_llama(2 * big)
    tw2, tb2 = interleaved(lambda: _pass(twice), lambda: _pass(model), r)
    rows.append(Row(f"pass at {2 * big} layers / pass at {big} layers: HF Llama (linear: 2)",
                    f"{tw2 / tb2:.2f}", "-", None, f"{tw2:.2f} s against {tb2:.2f} s"))

    n_blocks = 40 if quick else 400
    mlp = nn.Sequential(*[_MLP(16) for _ in range(n_blocks)])
    tm, tt = interleaved(lambda: zero_init_pass(mlp, dry_run=True),
                         lambda: fx.symbolic_trace(mlp), r)
    rows.append(Row(f"pass / symbolic_trace: {n_blocks} residual MLP blocks (symbolic capture)",
                    f"{tm / tt:.2f}", "<= 0.20", tm / tt <= 0.20,
                    f"pass {tm * 1e3:.0f} ms, trace {tt * 1e3:.0f} ms: symbolic capture is "
                    "not compositional yet"))

    layers = 5 if quick else 61
    for compositional in (True, False):
        d = deepseek(layers, compositional)
        gb = d["peak_rss"] / 2**30
        how = "compositional" if compositional else "compositional=False"
        rows.append(Row(f"DeepSeek-V3 published config, {layers} layers, meta ({how})",
                        f"{d['seconds']:.1f} s, {gb:.2f} GB", "<= 10 s, <= 2 GB"
                        if compositional else "-",
                        d["seconds"] <= 10 and gb <= 2 if compositional else None,
                        f"{d['modules']} modules planned; peak RSS of the whole process"))
    return rows


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, run, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
