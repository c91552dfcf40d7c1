"""`zeta-fx plan` on users' models: output formats, saved plans, pictures, one-line errors."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from zeta_fx import ZeroInitPlan
from zeta_fx.cli import UsageError, main

ROOT = Path(__file__).resolve().parents[1]
BUILT: list[nn.Module] = []


def build(width: int = 8, classes: int = 3) -> nn.Module:
    """A factory the CLI imports from this test module; keeps what it built."""
    model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, classes))
    BUILT.append(model)
    return model


class Branchy(nn.Module):
    """Data-dependent control flow: symbolic tracing cannot follow it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else x


NOT_CALLABLE = 42
ME = __name__


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_prints_json_report_of_torchvision_resnet18(capsys):
    code, out, err = run(capsys, "plan", "torchvision.models:resnet18", "--format", "json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["applied"] is False and data["rule"] == "residual_branch_last"
    assert data["modules"] == [f"layer{i}.{j}.bn2" for i in range(1, 5) for j in range(2)]


def test_plan_passes_factory_kwargs_and_never_writes_weights(capsys):
    BUILT.clear()
    code, out, _ = run(capsys, "plan", f"{ME}:build", "--kw", "width=6", "--kw", "classes=4",
                       "--rule", "output_layer", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["plan"]["entries"][0]["params"] == {"2.weight": [4, 6], "2.bias": [4]}
    (model,) = BUILT
    assert model[2].weight.abs().sum() > 0  # a dry run: the built model is untouched


def test_plan_table_in_any_tabulate_format(capsys):
    code, out, _ = run(capsys, "plan", f"{ME}:build", "--rule", "output_layer",
                       "--format", "github")
    assert code == 0
    assert out.splitlines()[0].startswith("| node ") and "| 2 " in out
    assert "would zero (dry run) 2 parameters in 1 modules" in out


def test_save_plan_applies_to_a_fresh_model(capsys, tmp_path):
    path = tmp_path / "plan.json"
    code, _, err = run(capsys, "plan", "zeta_fx.models:SEResNet", "--kw", "num_classes=5",
                       "--rule", "output_layer", "--save-plan", str(path))
    assert code == 0 and f"wrote the plan to {path}" in err
    from zeta_fx.models import SEResNet
    plan = ZeroInitPlan.from_json(path.read_text())
    model = SEResNet(num_classes=5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert plan.apply(model).params == ["head.weight", "head.bias"]
    after = model.state_dict()
    assert not after["head.weight"].any() and not after["head.bias"].any()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("head."))


def test_draw_writes_a_picture(capsys, tmp_path):
    target = tmp_path / "gpt.svg"
    code, _, err = run(capsys, "plan", "zeta_fx.models:GPT", "--kw", "n_layer=2",
                       "--input-shape", "1,8", "--dtype", "int64", "--draw", str(target),
                       "--focus", "h.0")
    assert code == 0
    if shutil.which("dot"):
        assert "rendered with Graphviz" in err and "<svg" in target.read_text()
    else:
        assert "render it with: dot -Tsvg" in err and (tmp_path / "gpt.dot").exists()


def test_meta_device_builds_no_storage(capsys):
    code, out, _ = run(capsys, "plan", "torchvision.models:resnet18", "--device", "meta",
                       "--format", "json")
    assert code == 0 and len(json.loads(out)["params"]) == 16


@pytest.mark.parametrize("argv, message", [
    (["no_such_pkg.models:f"], "cannot import module 'no_such_pkg.models': No module named"),
    (["torchvision.models:resnet5"], "has no attribute 'resnet5'; did you mean 'resnet50'?"),
    ([f"{ME}:NOT_CALLABLE"], "is a int, not a callable that returns an nn.Module"),
    (["torchvision.models"], "is not package.module:factory"),
    ([f"{ME}:build", "--kw", "depth=3"], "unexpected keyword argument 'depth'"),
    ([f"{ME}:build", "--kw", "width"], "--kw 'width': expected name=value"),
    ([f"{ME}:build", "--input-shape", "1,three"], "expected comma-separated non-negative"),
    ([f"{ME}:build", "--rule", "output_layr"], "Did you mean 'output_layer'?"),
    ([f"{ME}:build", "--format", "githb"], "did you mean 'github'?"),
    ([f"{ME}:build", "--dtype", "float8"], "--dtype 'float8' is not one of"),
    (["zeta_fx.models:SqueezeExcite"], "missing 1 required positional argument"),
    ([f"{ME}:Branchy"], "symbolic tracing failed in the model's own forward (Branchy)"),
    ([f"{ME}:Branchy"], "(on the command line: --input-shape with the shape of each input"),
])
def test_errors_are_one_line_exit_2_without_traceback(capsys, argv, message):
    code, out, err = run(capsys, "plan", *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("zeta-fx plan: error: ")
    assert message in err and "Traceback" not in err


def test_factory_returning_something_else(capsys):
    code, _, err = run(capsys, "plan", "collections:OrderedDict")
    assert code == 2 and "returned a OrderedDict, not an nn.Module" in err


def test_debug_shows_the_exception(capsys):
    with pytest.raises(UsageError, match="cannot import module") as info:
        main(["plan", "no_such_pkg.models:f", "--debug"])
    assert isinstance(info.value.__cause__, ImportError)


def test_installed_entry_point_plans_resnet50_and_draws(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-m", "zeta_fx", "plan", "torchvision.models:resnet50", "--draw",
         "resnet50.svg"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "would zero (dry run) 32 parameters in 16 modules" in proc.stdout
    assert "layer4.2.bn3" in proc.stdout
    drawn = tmp_path / ("resnet50.svg" if shutil.which("dot") else "resnet50.dot")
    assert drawn.exists() and "bn3" in drawn.read_text()
    bad = subprocess.run([sys.executable, "-m", "zeta_fx", "plan", "torchvision.models:nope"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
