"""Pass time and capture method for each Hugging Face family of ``tests/libraries/test_transformers.py``.

    python benchmarks/families.py

Prints ``family | capture | seconds``: ``zero_init_pass(..., dry_run=True)`` on the tiny test
config, capture included, one run after the imports. The capture column is the first of
symbolic tracing, ``torch.export`` and the concrete capture that succeeds, as
``capture="auto"`` tries them.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "libraries")]  # claims.py, test_transformers.py

import test_transformers as families  # noqa: E402
from zeta_fx import zero_init_pass  # noqa: E402
from zeta_fx.capture import capture  # noqa: E402


def capture_used(model, args, kwargs) -> str:
    for method in ("symbolic", "export", "concrete"):
        try:
            capture(model, example_inputs=args, example_kwargs=kwargs, method=method)
            return method
        except Exception:  # noqa: BLE001 - the next capture is tried, as "auto" does
            continue
    return "none"


def main() -> None:
    warnings.filterwarnings("ignore")
    for name in families.FAMILIES:
        model, args, kwargs = families._build(name)
        start = time.perf_counter()
        zero_init_pass(model, example_inputs=args, example_kwargs=kwargs, dry_run=True)
        seconds = time.perf_counter() - start
        print(f"{name} | {capture_used(model, args, kwargs)} | {seconds:.2f} s")


if __name__ == "__main__":
    main()
