"""A 100-block residual MLP without normalisation: default init diverges; gated or Fixup trains.

    python examples/deep_mlp_rezero.py                 # ~20 s on 2 CPU cores
    python examples/deep_mlp_rezero.py --out curves.svg
    python examples/deep_mlp_rezero.py --quick         # 20 blocks, 30 steps (the test runs this;
                                                       # so does ZETA_FX_EXAMPLE_QUICK=1)

Each block is ``x + fc2(relu(fc1(x)))``, nothing else: no norm, no scaling. With PyTorch's
default init every block adds to the variance of the residual stream, so after 100 blocks
the first loss is 38.7 for a target of variance 0.74, and the gradients are as outsized:
SGD with momentum at the
learning rate the gated model uses (0.03) overflows at step 2, and so does 1e-3; the
default init stays finite only at 1e-4, where it learns slowly. ``gate_residuals(model,
init=0.0)`` turns every block into ``x + α·fc2(relu(fc1(x)))`` with ``α = 0`` (ReZero,
SkipInit): the network starts as its input projection and head, and each block opens as
its gate learns. ``init_pass(model, init=inits.fixup())`` (Fixup, found from the graph)
zeroes each block's ``fc2`` and scales its ``fc1`` by ``100 ** -0.5``: it trains at the same
rate. Same seed, same data, same batches for every curve. The loss curves are
written as an SVG picture (by hand, no plotting library), log-scale.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zeta_fx import gate_residuals, init_pass, inits
from zeta_fx.gates import GatesReport


class Block(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))


class DeepMLP(nn.Module):
    def __init__(self, d_in: int = 16, width: int = 32, hidden: int = 32, depth: int = 100) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.Sequential(*(Block(width, hidden) for _ in range(depth)))
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.inp(x)))


def make_data(n: int = 4096, d_in: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth non-linear regression target (variance ~0.7)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d_in, generator=g)
    w = torch.randn(d_in, 1, generator=g) / math.sqrt(d_in)
    return x, torch.sin(2 * x @ w) + 0.5 * x[:, :1] * x[:, 1:2]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
          batch: int = 128) -> list[float]:
    """SGD with momentum; stops at the first loss that is not finite (it stays so)."""
    optim = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=torch.Generator().manual_seed(step))
        loss = F.mse_loss(model(x[idx]), y[idx])
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
        optim.zero_grad()
        loss.backward()
        optim.step()
    return losses


# -- the picture -----------------------------------------------------------------------------

COLOURS = ["#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd"]


def write_svg(curves: dict[str, list[float]], path: Path, title: str, steps: int) -> None:
    """Loss curves as an SVG: log-scale y, one polyline per curve, axes and a legend. A
    curve that stops early ends in a cross (its next loss was not finite); values above
    the plot are drawn at its top edge."""
    W, H, left, right, top, bottom = 720, 420, 70, 230, 40, 50
    finite = [v for c in curves.values() for v in c if math.isfinite(v) and v > 0]
    lo = math.floor(math.log10(min(finite)))
    hi = min(math.ceil(math.log10(max(finite))), lo + 8)
    pw, ph = W - left - right, H - top - bottom

    def px(step: int) -> float:
        return left + pw * step / max(steps - 1, 1)

    def py(value: float) -> float:
        exponent = min(max(math.log10(value), lo), hi)
        return top + ph * (hi - exponent) / (hi - lo)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{left + pw / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>']
    for e in range(lo, hi + 1):  # decades: grid line and label
        y = py(10.0 ** e)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">1e{e}</text>')
    spacing = next(m * 10 ** e for e in range(8) for m in (1, 2, 5) if m * 10 ** e * 6 >= steps)
    for step in range(0, steps, spacing):
        out.append(f'<text x="{px(step):.1f}" y="{top + ph + 18}" text-anchor="middle">'
                   f'{step}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
               'stroke="black"/>')
    out.append(f'<text x="{left + pw / 2}" y="{H - 10}" text-anchor="middle">step</text>')
    out.append(f'<text x="16" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {top + ph / 2})">training loss (MSE, log scale)</text>')
    for i, (label, losses) in enumerate(curves.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [(px(s), py(v)) for s, v in enumerate(losses) if math.isfinite(v) and v > 0]
        stopped = len(points) < len(losses)
        if len(points) == 1:
            points.append(points[0])
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="'
                   + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')
        if stopped:
            x, y = points[-1]
            out.append(f'<path d="M{x - 5:.1f},{y - 5:.1f} l10,10 m0,-10 l-10,10" '
                       f'stroke="{colour}" stroke-width="2"/>')
        ly = top + 14 + 20 * i
        out.append(f'<line x1="{left + pw + 12}" y1="{ly - 4}" x2="{left + pw + 36}" '
                   f'y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{left + pw + 42}" y="{ly}">{label}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


# -- the run ---------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path(tempfile.gettempdir()) / "zeta_fx_deep_mlp_rezero.svg",
                        help="where the SVG picture of the loss curves goes")
    parser.add_argument("--quick", action="store_true",
                        default=bool(os.environ.get("ZETA_FX_EXAMPLE_QUICK")),
                        help="20 blocks, 30 steps: checks that everything runs")
    args = parser.parse_args()
    depth, steps, lr, small_lr = (20, 30, 0.03, 1e-4) if args.quick else (100, 300, 0.03, 1e-4)
    torch.set_num_threads(1)  # small matrices: threads only add overhead
    x, y = make_data()

    def fresh() -> DeepMLP:
        torch.manual_seed(0)
        return DeepMLP(depth=depth)

    curves: dict[str, list[float]] = {}
    started = time.perf_counter()
    curves[f"default init, lr {lr:g}"] = train(fresh(), x, y, steps, lr)
    curves[f"default init, lr {small_lr:g}"] = train(fresh(), x, y, steps, small_lr)

    gated = gate_residuals(fresh(), init=0.0, graph=True)
    report = GatesReport.of(gated)
    print("\n".join(str(report).splitlines()[:4]) + "\n...")
    print(report.summary())
    curves[f"gate_residuals (α = 0), lr {lr:g}"] = train(gated, x, y, steps, lr)

    # Fixup from the graph: each block's fc2 zeroed, its fc1 He-normal scaled by
    # L^(-1/(2m-2)) = depth^(-1/2) (m = 2 layers per branch)
    model = fresh()
    fixup = init_pass(model, init=inits.fixup(), seed=0)
    print(fixup.summary())
    curves[f"init_pass(init=fixup()), lr {lr:g}"] = train(model, x, y, steps, lr)

    elapsed = time.perf_counter() - started
    print(f"\n{depth} residual blocks, {steps} steps of SGD (momentum 0.9), batch 128; "
          f"variance of the target {y.var().item():.3f}")
    width = max(len(k) for k in curves)
    for label, losses in curves.items():
        last = losses[-1]
        peak = max((v for v in losses if math.isfinite(v)), default=math.nan)
        fate = (f"diverged: loss {peak:.3g} (first {losses[0]:.3g}), then {last} at step "
                f"{len(losses) - 1}" if not math.isfinite(last) else
                f"final loss {last:.4g} (first {losses[0]:.3g}, best {min(losses):.4g})")
        print(f"  {label:<{width}}  {fate}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_svg(curves, args.out, f"{depth}-block residual MLP, no normalisation", steps)
    print(f"loss curves: {args.out} ({elapsed:.1f} s of training)")


if __name__ == "__main__":
    main()
