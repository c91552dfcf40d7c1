"""The command line (``zeta_fx.cli``): `zeta-fx plan` on users' models (output formats, saved
plans, pictures, one-line errors), and `demo` and `rules`."""
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
from zeta_fx.cli import main

ROOT = Path(__file__).resolve().parents[2]
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
    # A dry run changed nothing; that applying would is said as such.
    assert data["dry_run"] is True and data["changed"] is False
    assert data["would_change"] is True
    # Each row names its join by graph node: the merge and the skip operand it equals.
    first = data["touched"][0]
    # (torchvision's `out += identity` is an in-place add, as symbolic capture records it)
    assert (first["node"], first["merge"], first["skip"]) == ("layer1_0_bn2", "iadd", "maxpool")


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
    assert "would zero (dry run) 2 parameters in 1 module, " in out


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


def test_debug_shows_the_traceback_and_still_exits_2(capsys):
    code, out, err = run(capsys, "plan", "no_such_pkg.models:f", "--debug")
    assert code == 2 and out == ""
    assert err.startswith("Traceback") and "ModuleNotFoundError" in err  # the cause, too
    assert "UsageError: cannot import module 'no_such_pkg.models'" in err


@pytest.mark.slow  # a fresh Python process
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


# -- newcomer papercuts (issue 10) ----------------------------------------------------------
class Gated(nn.Module):
    """A residual block followed by a submodule that symbolic tracing cannot follow."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
        self.gate = nn.Sequential(Branchy())

    def forward(self, x):
        return self.gate(x + self.fc2(torch.relu(self.fc1(x))))


@pytest.mark.parametrize("leaf", ["gate", "gate.*", f"{ME}:Branchy"])
def test_leaf_keeps_an_untraceable_submodule_opaque(capsys, leaf):
    code, out, err = run(capsys, "plan", f"{ME}:Gated", "--leaf", leaf, "--format", "json")
    assert code == 0, err
    assert json.loads(out)["params"] == ["fc2.weight", "fc2.bias"]


def test_untraceable_submodule_error_names_the_cli_options(capsys):
    code, _, err = run(capsys, "plan", f"{ME}:Gated")
    assert code == 2 and "symbolic tracing failed in `gate.0` (Branchy)" in err
    assert "--input-shape" in err and "--leaf FQN or --leaf package.module:Class" in err


@pytest.mark.parametrize("leaf, message", [
    ("gat", "--leaf: 'gat' names no module of Gated; nearest: 'gate'"),
    ("fc9.*", "--leaf: 'fc9.*' names no module of Gated; nearest: 'fc2', 'fc1'"),
    ("fc1.*", "--leaf: 'fc1.*' names no module of Gated; nearest: 'fc1'"),  # fc1 has none under it
    ("torch.nn:Linearr", "has no attribute 'Linearr'; did you mean 'Linear'?"),
    ("torch.nn:functional", "is a module, not an nn.Module subclass"),
    ("not a name", "expected a module FQN"),
])
def test_bad_leaf_is_one_line(capsys, leaf, message):
    code, out, err = run(capsys, "plan", f"{ME}:Gated", "--leaf", leaf)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert message in err


class ShapeBranchy(nn.Module):
    """Control flow on a tensor's shape: symbolic tracing fails, torch.export follows it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) if x.shape[0] > 1 else x


def test_input_shape_captures_by_export(capsys):
    for capture in ("auto", "export"):
        code, out, err = run(capsys, "plan", f"{ME}:ShapeBranchy", "--input-shape", "2,4",
                             "--capture", capture, "--rule", "output_layer", "--format", "json")
        assert code == 0, err
        assert json.loads(out)["params"] == ["fc.weight", "fc.bias"]
    code, _, err = run(capsys, "plan", f"{ME}:ShapeBranchy", "--capture", "export")
    assert code == 2 and "capture='export' needs example inputs" in err and "--input-shape" in err


def _console_script(tmp_path: Path) -> Path:
    """What pip writes for ``zeta-fx``: run from its own folder, so sys.path[0] is that."""
    script = tmp_path / "bin" / "zeta-fx"
    script.parent.mkdir()
    script.write_text("import sys\nfrom zeta_fx.cli import main\nsys.exit(main())\n")
    return script


@pytest.mark.slow  # a fresh Python process
def test_factory_in_the_current_directory_is_found_like_python_m(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "mymodels_papercut.py").write_text(
        "from torch import nn\n"
        "def Net():\n    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(_console_script(tmp_path)), "plan",
                           "mymodels_papercut:Net", "--rule", "output_layer"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "would zero (dry run) 2 parameters in 1 module," in proc.stdout


@pytest.mark.slow  # a fresh Python process
def test_no_numpy_warning_without_numpy(tmp_path):
    # numpy is not a dependency: a package that fails to import stands in for its absence.
    (tmp_path / "numpy").mkdir()
    (tmp_path / "numpy" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'numpy'\", name='numpy')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-W", "default", str(_console_script(tmp_path)),
                           "rules"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "residual_branch_last" in proc.stdout
    assert proc.stderr == ""
    # Only torch's one warning at import is filtered: the same text later is shown.
    later = subprocess.run([sys.executable, "-c", "import zeta_fx, warnings; "
                            "warnings.warn('Failed to initialize NumPy: later')"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert "UserWarning: Failed to initialize NumPy: later" in later.stderr


def test_dry_run_is_accepted_and_changes_nothing(capsys):
    BUILT.clear()
    code, out, _ = run(capsys, "plan", f"{ME}:build", "--dry-run", "--rule", "output_layer",
                       "--format", "json")
    assert code == 0 and json.loads(out)["dry_run"] is True
    assert BUILT[0][2].weight.abs().sum() > 0


# -- demo and rules -------------------------------------------------------------------------
def test_cli_demo_and_rules(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "== se_resnet: SEResNet" in out and "== gpt: GPT" in out
    assert "blocks.5.bn3" in out and "h.3.mlp.c_proj" in out
    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    assert "residual_branch_last" in out and "output_layer" in out


@pytest.mark.slow  # a fresh Python process
def test_python_dash_m_runs_the_demo():
    proc = subprocess.run([sys.executable, "-m", "zeta_fx", "demo", "gpt", "--format", "github"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| h_0_attn_c_proj |" in proc.stdout



# -- a command line that survives its factory (issue 18) ------------------------------------
def exits_zero():
    sys.exit(0)


def exits_with_a_message():
    raise SystemExit("no model today")


def exits_three():
    sys.exit(3)


def chatty(width: int = 8):
    print("building the model...")
    return build(width=width)


class ChattyForward(nn.Module):
    """Prints from its forward, which export capture runs."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        print("forward on", tuple(x.shape))
        return x + self.fc(x)


@pytest.mark.parametrize("factory, said", [
    ("exits_zero", "sys.exit(0)"), ("exits_with_a_message", "sys.exit('no model today')"),
    ("exits_three", "sys.exit(3)")])
def test_a_factory_that_exits_is_an_error_naming_it(capsys, factory, said):
    code, out, err = run(capsys, "plan", f"{ME}:{factory}")
    assert code == 2 and out == ""
    assert f"calling {ME}:{factory}() called {said}" in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("factory, argv", [
    ("chatty", []), ("ChattyForward", ["--input-shape", "2,4", "--capture", "export"])])
def test_a_printing_factory_still_gives_one_json_document(capsys, factory, argv):
    code, out, err = run(capsys, "plan", f"{ME}:{factory}", "--format", "json", *argv)
    assert code == 0
    json.loads(out)  # stdout is the report alone
    assert ("building the model..." if factory == "chatty" else "forward on (2, 4)") in err


@pytest.mark.slow  # a fresh Python process
def test_a_closed_pipe_ends_quietly(tmp_path):
    """`zeta-fx plan ... --format json | head -c 10`: the reader is gone before the report
    is written (made certain here by closing the pipe's read end first)."""
    read, write = os.pipe()
    os.close(read)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + str(Path(__file__).resolve().parent))
    try:
        proc = subprocess.run([sys.executable, "-m", "zeta_fx", "plan", "test_cli:chatty",
                               "--format", "json"], stdout=write, stderr=subprocess.PIPE,
                              cwd=tmp_path, env=env, text=True, timeout=300)
    finally:
        os.close(write)
    assert proc.returncode == 141  # 128 + SIGPIPE, as a Unix tool stopped by the pipe
    assert proc.stderr == "building the model...\n"  # the factory's own words, nothing else
