"""Words that are true (issue 21): a summary never says "zeroed" when nothing changed, a
picture or plan path in a missing folder is refused with advice about the folder, and
``--focus`` without ``--draw`` is an error (see also test_names.py)."""
from __future__ import annotations

import pytest
import torch

from zeta_fx import zero_init_pass
from zeta_fx.cli import main
from zeta_fx.errors import RenderError
from zeta_fx.models import GPT


def test_a_second_pass_says_already_zero_not_zeroed():
    model = GPT(n_layer=1)
    first = zero_init_pass(model)
    assert first.changed and " zeroed 4 parameters" in first.summary()
    again = zero_init_pass(model)
    assert not again.changed
    assert "found 4 parameters in 2 modules already zero (nothing changed)" in again.summary()
    assert "zeroed" not in again.summary()
    dry = zero_init_pass(model, dry_run=True)
    assert "already zero (applying would change nothing)" in dry.summary()


def test_a_meta_model_still_says_would_zero():
    with torch.device("meta"):
        model = GPT(n_layer=1)
    assert "would zero (dry run)" in zero_init_pass(model, dry_run=True).summary()


def test_draw_into_a_missing_folder_names_the_folder(tmp_path):
    report = zero_init_pass(GPT(n_layer=1), dry_run=True)
    target = tmp_path / "missing" / "g.svg"
    with pytest.raises(RenderError, match=r"the folder '.*missing' does not exist; create it "
                                          r"first \(mkdir -p "):
        report.draw(target)
    assert not target.parent.exists()


@pytest.mark.parametrize("flag", ["--draw", "--save-plan"])
def test_cli_missing_folder_is_refused_before_the_model_is_built(capsys, tmp_path, flag):
    target = tmp_path / "missing" / ("g.svg" if flag == "--draw" else "plan.json")
    code = main(["plan", "zeta_fx.models:GPT", "--kw", "n_layer=1", flag, str(target)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "does not exist; create it first (mkdir -p" in err and str(target.parent) in err
