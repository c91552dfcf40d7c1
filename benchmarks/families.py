"""Capture + pass time for each family of the library tests, against the capture alone.

    python benchmarks/families.py               # every family, 3 interleaved repeats
    python benchmarks/families.py --repeats 1 --only qwen3_next,unet3d,lumina2

Prints a markdown table: ``family | capture | capture s | capture + pass s | ratio``.
``capture + pass`` is ``zero_init_pass(..., dry_run=True)`` on the tiny test config (the
capture included, as a user runs it); the baseline is the capture alone
(``zeta_fx.capture.capture_model``, the entrance the pass itself goes through, with the same
inputs), measured side by side in the same process: the two alternate (which goes first
alternates too), after one warm-up each, and the median of the repeats is taken. The ratio
is what the analysis, the proof and the plan add on top of tracing (1.0: the pass costs
nothing beyond its capture). The capture
column is the method ``capture="auto"`` ends up with (symbolic tracing, ``torch.export``,
or the concrete capture that follows the forward on the example inputs).

The families are those of ``tests/libraries/test_transformers.py`` and
``tests/libraries/test_diffusers.py``, plus the ones issue 20 names as the slowest or the
last to be proven (a 3D UNet, Qwen3-Next, Lumina2, Phi-MoE, HiDream), each from a tiny config.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path[:0] = [str(ROOT), str(TESTS), str(TESTS / "libraries")]

from zeta_fx import zero_init_pass  # noqa: E402
from zeta_fx.capture import capture_model  # noqa: E402

Build = Callable[[], tuple[nn.Module, tuple, dict]]


def _ids() -> torch.Tensor:
    return torch.randint(3, 64, (1, 8), generator=torch.Generator().manual_seed(0))


def _quiet(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build().eval()


def _qwen3_next() -> tuple[nn.Module, tuple, dict]:
    import transformers as T
    config = T.Qwen3NextConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, num_key_value_heads=2, head_dim=8, linear_num_value_heads=4,
        linear_num_key_heads=2, linear_key_head_dim=8, linear_value_head_dim=8, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16,
        layer_types=["linear_attention", "linear_attention", "full_attention"])
    return _quiet(lambda: T.Qwen3NextModel(config)), (), {"input_ids": _ids()}


def _phimoe() -> tuple[nn.Module, tuple, dict]:
    import transformers as T
    config = T.PhimoeConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3,
                            num_attention_heads=4, intermediate_size=64, num_key_value_heads=2,
                            num_local_experts=4, num_experts_per_tok=2)
    return _quiet(lambda: T.PhimoeModel(config)), (), {"input_ids": _ids()}


def _unet3d() -> tuple[nn.Module, tuple, dict]:
    import diffusers as D
    model = _quiet(lambda: D.UNet3DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), layers_per_block=1,
        cross_attention_dim=8, attention_head_dim=4, norm_num_groups=4))
    g = torch.Generator().manual_seed(0)
    return model, (torch.randn(1, 4, 2, 8, 8, generator=g), torch.tensor([3]),
                   torch.randn(1, 5, 8, generator=g)), {}


def _lumina2() -> tuple[nn.Module, tuple, dict]:
    import test_buffer_families as buffers
    return buffers._lumina2(), (), buffers._inputs(0)


def _hidream() -> tuple[nn.Module, tuple, dict]:
    import test_hidream as hidream
    return hidream._model(), (), hidream._inputs(0)


def families() -> dict[str, Build]:
    """name -> a builder of ``(model, example_inputs, example_kwargs)``."""
    import test_diffusers as diffusers_families
    import test_transformers as hf_families
    out: dict[str, Build] = {}
    for name in hf_families.FAMILIES:
        out[name] = lambda name=name: hf_families._build(name)
    for name in diffusers_families.FAMILIES:
        out[f"diffusers/{name}"] = lambda name=name: diffusers_families._build(name)
    out.update({"qwen3_next": _qwen3_next, "phimoe": _phimoe, "unet3d": _unet3d,
                "lumina2": _lumina2, "hidream": _hidream})
    return out


def capture_used(model: nn.Module, args: tuple, kwargs: dict) -> str:
    """The first of symbolic tracing, ``torch.export`` and the concrete capture that
    succeeds, as ``capture="auto"`` tries them (worked out once, outside the timing)."""
    for method in ("symbolic", "export", "concrete"):
        try:
            capture_model(model, example_inputs=args or None, example_kwargs=kwargs or None,
                          method=method)
            return method
        except Exception:  # noqa: BLE001 - the next capture is tried, as "auto" does
            continue
    return "none"


def measure(build: Build, repeats: int) -> tuple[str, float, float]:
    """``(capture method, median capture seconds, median capture + pass seconds)``."""
    model, args, kwargs = build()

    def capture_only() -> Any:
        return capture_model(model, example_inputs=args or None, example_kwargs=kwargs or None)

    def capture_and_pass() -> Any:
        return zero_init_pass(model, example_inputs=args or None,
                              example_kwargs=kwargs or None, dry_run=True)

    capture_only(), capture_and_pass()  # warm-up
    alone, both = [], []
    pair = [(capture_only, alone), (capture_and_pass, both)]
    for i in range(repeats):
        for fn, times in (pair if i % 2 == 0 else pair[::-1]):  # neither always first
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            finally:
                gc.enable()
    return capture_used(model, args, kwargs), statistics.median(alone), statistics.median(both)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated family names")
    options = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    table = families()
    names = [n for n in options.only.split(",") if n] or list(table)
    print(f"torch {torch.__version__}, {options.repeats} interleaved repeats, medians\n")
    print("| family | capture | capture s | capture + pass s | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        try:
            method, alone, both = measure(table[name], options.repeats)
        except Exception as error:  # noqa: BLE001 - a family that fails is reported, not fatal
            print(f"| {name} | failed: {type(error).__name__}: {str(error)[:80]} | | | |")
            continue
        print(f"| {name} | {method} | {alone:.2f} | {both:.2f} | {both / alone:.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
