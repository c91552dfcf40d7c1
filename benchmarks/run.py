"""zeta_fx benchmarks: one command, one markdown table.

    python benchmarks/run.py            # the README's table (a few minutes on 2 CPU cores)
    python benchmarks/run.py --quick    # fewer repeats, smaller models (a smoke run)

Every figure is a ratio against a baseline measured side by side in the same process, with
the two interleaved and the median of the repeats taken, or (for the 70B-shaped plan) an
absolute time and peak resident memory measured in a fresh subprocess:

- pass / trace: ``zero_init_pass`` on an already-traced ``GraphModule`` against
  ``torch.fx.symbolic_trace`` of the same model (torchvision ResNet-152, a 48-layer
  GPT-style model, a 1000-block generated network).
- growth: pass time at 96 layers over pass time at 12, divided by 8 (1.0 = linear).
- 70B-shaped plan: ``zero_init_pass(..., dry_run=True)`` on an 80-layer, width-8192
  Llama-like decoder built on the meta device: wall time (trace + plan) and peak RSS of the
  whole process (``VmHWM``, imports included).
- apply: ``plan.apply(model)`` against a bare ``torch.nn.init.zeros_`` loop over the same
  tensors (refilled with non-zero values before each timed run).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from zeta_fx import zero_init_pass  # noqa: E402
from zeta_fx.models import GPT  # noqa: E402


# -- models ---------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, n_kv_head: int) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, dim // n_head
        self.q_proj = nn.Linear(dim, n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_head * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        rep = self.n_head // self.n_kv_head
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, n_head: int, n_kv_head: int, hidden: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = Attention(dim, n_head, n_kv_head)
        self.post_attention_layernorm = RMSNorm(dim)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """Llama-2-70B shapes by default: 80 layers, width 8192, 64 heads, 8 KV heads."""

    def __init__(self, n_layer: int = 80, dim: int = 8192, n_head: int = 64,
                 n_kv_head: int = 8, hidden: int = 28672, vocab: int = 32000) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(DecoderLayer(dim, n_head, n_kv_head, hidden)
                                    for _ in range(n_layer))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


def generated_net(n_blocks: int, seed: int = 0) -> nn.Module:
    """A ``tests/netgen.py`` network of ``n_blocks`` residual blocks drawn from varied
    templates (plain, SE, LayerScale, projection, nested, two-branch, functional norms)."""
    import netgen
    from netgen import Block, Net, Op

    inner = Block(((Op("conv1", False), Op("bn"), Op("relu")),), 0, "op", True, "relu")
    templates = [
        Block(((Op("conv3", False), Op("bn"), Op("relu"), Op("conv3", False), Op("bn")),),
              0, "op", True, "relu"),
        Block(((Op("conv1", False), Op("bn"), Op("relu"), Op("conv1", False), Op("bn"),
                Op("se")),), 2, "op", False, "relu"),
        Block(((Op("fln"), Op("lin"), Op("gelu"), Op("lin"), Op("ls", False),
                Op("droppath")),), 0, "op", True, None),
        Block(((Op("wsconv"), Op("fbn"), Op("silu"), Op("nested", inner), Op("conv1", True)),),
              0, "torch", True, None),
        Block(((Op("gn"), Op("conv1", True)), (Op("conv3", False), Op("fbn"))),
              0, "method", True, "relu"),
    ]
    rng = random.Random(seed)
    units = tuple(("block", rng.choice(templates)) for _ in range(n_blocks))
    return netgen.build(Net(8, False, units), seed)


# -- timing ---------------------------------------------------------------------------

def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(a: Callable[[], object], b: Callable[[], object], repeats: int
                ) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, run alternately ``repeats`` times (after one
    warm-up each), with the garbage collector paused during each timed call."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            ta.append(_time(a))
            tb.append(_time(b))
        finally:
            gc.enable()
    return statistics.median(ta), statistics.median(tb)


def pass_vs_trace(model: nn.Module, repeats: int) -> tuple[float, float]:
    """(median pass seconds on an already-traced graph, median symbolic_trace seconds)."""
    gm = fx.symbolic_trace(model)
    return interleaved(lambda: zero_init_pass(gm, rule="residual_branch_last"),
                       lambda: fx.symbolic_trace(model), repeats)


def pass_time(model: nn.Module, repeats: int) -> float:
    gm = fx.symbolic_trace(model)
    t, _ = interleaved(lambda: zero_init_pass(gm), lambda: None, repeats)
    return t


def apply_vs_zeros(model: nn.Module, repeats: int) -> tuple[float, float, int]:
    """(median ``plan.apply`` seconds, median bare ``zeros_`` loop seconds, elements)."""
    plan = zero_init_pass(model, dry_run=True).plan
    tensors = [model.get_parameter(n) for n in plan.params]

    def refill() -> None:
        with torch.no_grad():
            for t in tensors:
                t.fill_(0.5)

    def apply() -> None:
        plan.apply(model)

    def bare() -> None:
        for t in tensors:
            nn.init.zeros_(t)

    ta, tb = [], []
    refill(), apply(), refill(), bare()
    for _ in range(repeats):
        for fn, out in ((apply, ta), (bare, tb)):
            refill()
            gc.collect()
            gc.disable()
            try:
                out.append(_time(fn))
            finally:
                gc.enable()
    return statistics.median(ta), statistics.median(tb), sum(t.numel() for t in tensors)


_META_CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
import torch
from run import Llama, peak_rss
from zeta_fx import zero_init_pass
with torch.device("meta"):
    model = Llama(n_layer={n_layer}, dim={dim}, hidden={hidden})
start = time.perf_counter()
report = zero_init_pass(model, rule="residual_branch_last", dry_run=True)
seconds = time.perf_counter() - start
hwm = peak_rss()
n_params = sum(p.numel() for p in model.parameters())
print(json.dumps({{"seconds": seconds, "peak_rss": hwm, "modules": len(report.modules),
                  "params": n_params}}))
"""


def peak_rss() -> int:
    """This process's peak resident memory in bytes (``VmHWM``; ``ru_maxrss`` elsewhere)."""
    import resource

    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def meta_plan(n_layer: int = 80, dim: int = 8192, hidden: int = 28672) -> dict:
    """Plan a Llama-shaped decoder on the meta device in a fresh Python process."""
    code = _META_CHILD.format(root=str(ROOT), bench=str(ROOT / "benchmarks"),
                              n_layer=n_layer, dim=dim, hidden=hidden)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the table ------------------------------------------------------------------------

@dataclass
class Row:
    what: str
    measured: str
    target: str
    ok: bool | None
    detail: str = ""


def run(quick: bool = False, repeats: int | None = None) -> list[Row]:
    import torchvision

    torch.manual_seed(0)
    r = repeats or (3 if quick else 15)
    rows: list[Row] = []

    # (name, model factory, repeats): tracing the 1000-block network takes seconds, so it
    # gets fewer repeats.
    cases = [("torchvision ResNet-152", lambda: torchvision.models.resnet152(), r),
             ("GPT-style, 48 layers", lambda: GPT(n_layer=48), r),
             ("generated network, 1000 blocks", lambda: generated_net(1000), max(3, r // 3))]
    if quick:
        cases = [("torchvision ResNet-18", lambda: torchvision.models.resnet18(), r),
                 ("GPT-style, 4 layers", lambda: GPT(n_layer=4), r),
                 ("generated network, 20 blocks", lambda: generated_net(20), r)]
    for name, make, repeats_here in cases:
        tp, tt = pass_vs_trace(make(), repeats_here)
        ratio = tp / tt
        rows.append(Row(f"pass / symbolic_trace: {name}", f"{ratio:.3f}", "<= 0.10",
                        ratio <= 0.10, f"pass {tp * 1e3:.1f} ms, trace {tt * 1e3:.1f} ms"))

    small, big = (2, 16) if quick else (12, 96)
    t12 = pass_time(GPT(n_layer=small), r)
    t96 = pass_time(GPT(n_layer=big), r)
    growth = (t96 / t12) / (big / small)
    rows.append(Row(f"growth, GPT-style {small} -> {big} layers: (t{big}/t{small})/{big // small}",
                    f"{growth:.3f}", "<= 1.25", growth <= 1.25,
                    f"{t12 * 1e3:.1f} ms -> {t96 * 1e3:.1f} ms"))

    shape = dict(n_layer=4, dim=512, hidden=1024) if quick else {}
    meta = meta_plan(**shape)
    label = "Llama-like, 4 layers, width 512" if quick else "70B-shaped (80 layers, width 8192)"
    rows.append(Row(f"meta-device plan, {label}: time", f"{meta['seconds']:.2f} s", "<= 5 s",
                    meta["seconds"] <= 5.0,
                    f"{meta['params'] / 1e9:.1f} G parameters, {meta['modules']} modules planned"))
    gb = meta["peak_rss"] / 2**30
    rows.append(Row(f"meta-device plan, {label}: peak RSS", f"{gb:.2f} GB", "<= 1.5 GB",
                    gb <= 1.5, "whole process, torch import included (VmHWM)"))

    apply_model = Llama(n_layer=2, dim=256, hidden=512, vocab=1000) if quick else \
        Llama(n_layer=8, dim=1024, hidden=2816, vocab=32000)
    ta, tb, n = apply_vs_zeros(apply_model, r)
    rows.append(Row("apply / bare nn.init.zeros_ loop", f"{ta / tb:.2f}", "<= 1.2",
                    ta / tb <= 1.2,
                    f"{n / 1e6:.1f} M elements in {2 * len(apply_model.layers)} tensors: "
                    f"apply {ta * 1e3:.1f} ms, zeros_ {tb * 1e3:.1f} ms"))
    return rows


def table(rows: list[Row]) -> str:
    from tabulate import tabulate

    body = [[r.what, r.measured, r.target, "-" if r.ok is None else "yes" if r.ok else "no",
             r.detail] for r in rows]
    return tabulate(body, headers=["benchmark", "measured", "target", "met", "detail"],
                    tablefmt="github", disable_numparse=True)


def main(argv: list[str] | None = None, run_rows: Callable[..., list[Row]] | None = None,
         description: str | None = None) -> int:
    """The command line of a benchmark script: ``run_rows(quick=, repeats=)`` (this file's
    :func:`run` by default) printed as a table under the machine's description."""
    parser = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure")
    args = parser.parse_args(argv)
    rows = (run_rows or run)(quick=args.quick, repeats=args.repeats)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} threads, Python {sys.version.split()[0]}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
