"""Every script in examples/ runs to completion and prints what it is meant to show."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each example is a fresh Python process

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
# The summary line every report prints (str(report) ends its touched table with it).
REPORT_LINE = re.compile(r"rule \S.* (zeroed|would zero \(dry run\)) \d+ parameters in \d+ "
                         r"modules|rule \S.* found nothing to zero|"
                         r"rule \S.* gated \d+ residual joins?")
ZERO_TENSOR = re.compile(r"tensor\(\[[\[\]0.,\s]*\]")
# The point of an example, in the lines it prints (each example also checks it itself and
# exits non-zero when it does not hold).
POINTS = {
    # the compiled GPT runs on the zeroed parameters, which are zero, and matches eager
    "gpt_compile.py": [r"zeroed parameters: [1-9]\d*, all zero: True",
                       r"compiled \(aot_eager\) == eager: True; graphs compiled: 1; "
                       r"graph breaks: 0"],
    # each FSDP2 rank's local shards: zero exactly where the plan says, non-zero elsewhere
    "meta_fsdp2_plan.py": [
        rf"rank {rank}: local shards written in place: True; shards of the [1-9]\d* planned "
        r"tensors zero: True; all other shards non-zero: True" for rank in (0, 1)]
    + [r"rank 0: full tensors: planned ones zero: True; all others untouched and non-zero: "
       r"True"],
}


def test_there_are_examples():
    names = {p.name for p in EXAMPLES}
    assert {"torchvision_resnet.py", "seed_single_linear.py", "seed_all_layers.py"} <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               ZETA_FX_EXAMPLE_QUICK="1")  # examples that train take a short run
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    if script.name.startswith("seed_"):
        # The seed examples print the layers they zeroed: every tensor printed is all zeros.
        tensors = re.findall(r"tensor\(\[.*?\](?=,\s*requires_grad|\))", proc.stdout, re.S)
        assert tensors, proc.stdout
        assert all(ZERO_TENSOR.fullmatch(t) for t in tensors), proc.stdout
    else:
        assert REPORT_LINE.search(proc.stdout), f"{script.name} printed no report:\n{proc.stdout}"
    for point in POINTS.get(script.name, ()):
        assert re.search(point, proc.stdout), f"{script.name}: no `{point}` in:\n{proc.stdout}"


def test_every_point_names_an_example():
    assert set(POINTS) <= {p.name for p in EXAMPLES}
