"""The report (``zeta_fx.report``): rows with their structured sites, the table in any
tabulate format, the JSON, and the one-line summary.

The report is made once from the plan and the outcome. Each touched row carries its
``site`` as data (kind, merge, skip, fork, skip kind, skip modules, zero_at); the prose
``position`` is presentation, checked here once: the table shows it. The picture has its
own file, ``test_picture.py``.
"""

import json

import pytest

from zeta_fx import zero_init_pass


def test_report_rows_columns_footer_and_data(small_resnet):
    model = small_resnet()
    report = zero_init_pass(model)
    assert report.modules == ["blocks.0.bn3", "blocks.1.bn3"]
    assert report.params == ["blocks.0.bn3.weight", "blocks.0.bn3.bias",
                             "blocks.1.bn3.weight", "blocks.1.bn3.bias"]
    row = report.touched[1]
    assert row["node"] == "blocks_1_bn3" and row["type"] == "BatchNorm2d"
    assert row["params"] == {"blocks.1.bn3.weight": [16], "blocks.1.bn3.bias": [16]}
    assert row["elements"] == 32
    assert row["site"] == {
        "kind": "residual", "node": "blocks_1_bn3", "merge": "add_1",
        "skip": "blocks_1_downsample_1", "fork": "blocks_0_relu_2", "skip_kind": "projection",
        "skip_modules": ["blocks.1.downsample.0", "blocks.1.downsample.1"], "zero_at": "mul_1",
        "position": row["position"], "roles": [], "chunks": 0}
    assert (row["merge"], row["skip"], row["zero_at"]) == ("add_1", "blocks_1_downsample_1",
                                                           "mul_1")
    text = str(report)
    header = text.splitlines()[0].split()
    assert header == ["node", "module", "type", "position", "zeroed", "elements"]
    assert all(r["position"] and r["position"] in text for r in report.touched)
    total = sum(p.numel() for p in model.parameters())
    assert f"48 of {total:,} elements" in text
    data = json.loads(report.to_json())
    assert data["modules"] == report.modules and data["applied"] is True
    assert data["touched"][0]["module"] == "blocks.0.bn3"
    assert data["touched"][1]["site"] == row["site"]
    assert report.to_dict()["plan"]["entries"][0]["params"] == {"blocks.0.bn3.weight": [8],
                                                                 "blocks.0.bn3.bias": [8]}


@pytest.mark.parametrize("fmt,marker", [("github", "|"), ("grid", "+===="), ("html", "<table>")])
def test_any_tabulate_format(fmt, marker, small_resnet):
    report = zero_init_pass(small_resnet())
    assert marker in report.table(fmt)
    assert marker in f"{report:{fmt}}"
    with pytest.raises(TypeError):  # presentation is the report's: report.table(fmt)
        zero_init_pass(small_resnet(), tablefmt=fmt)

