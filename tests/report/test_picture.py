"""The picture, by part: the summary (what is marked, what collapses, laziness), DOT, rendering."""
from __future__ import annotations

import json
import logging
import pickle
import re
import shutil

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import zeta_fx.report.picture as picture
import zeta_fx.report.picture.render as render
import zeta_fx.report.report
from zeta_fx import RenderError, ZeroInitPlan, zero_init_pass
from zeta_fx.analysis import GraphView
from zeta_fx.capture import capture
from zeta_fx.models import GPT, SEResNet
from zeta_fx.rules import OutputLayer, ResidualBranchLast

HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="Graphviz `dot` is not installed "
                               "(apt-get install graphviz); rendering cannot be tested")

NODE = re.compile(r'^\s*(n\d+) \[(.*)\];$')
EDGE = re.compile(r'^\s*(n\d+) -> (n\d+)(?: \[(.*)\])?;$')


def parse_dot(dot: str):
    """Nodes (id -> attribute text) and edges (src, dst, attribute text) of our DOT."""
    nodes, edges = {}, []
    for line in dot.splitlines():
        if m := NODE.match(line):
            nodes[m.group(1)] = m.group(2)
        elif m := EDGE.match(line):
            edges.append((m.group(1), m.group(2), m.group(3) or ""))
    return nodes, edges


def attr(text: str, name: str) -> str:
    m = re.search(rf'(?:^|, ){name}="((?:[^"\\]|\\.)*)"', text)
    return m.group(1) if m else ""


def is_skip_style(style: str) -> bool:
    return "style=dashed" in style and "#1565c0" in style


# -- summary: what is marked, what collapses (zeta_fx.report.picture.model) -----------------

class Gated(nn.Module):  # branch ends in a sigmoid: left alone
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return x + torch.sigmoid(self.fc(x))


class Parallel(nn.Module):  # RepVGG-style: no path is the skip
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.a(x) + self.b(x)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.g, self.r = nn.Linear(8, 8), Gated(), Parallel()
        self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 8)
        self.p1, self.p2, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        x = self.r(self.g(self.inp(x)))
        x = x + self.fc2(F.gelu(self.fc1(x)))
        a = self.p1(x)
        return self.head(a + self.p2(x)), a  # FPN-like sum: `a` is an output too


@pytest.fixture(scope="module")
def resnet18_report():
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    return model, zero_init_pass(model, rule="residual_branch_last", dry_run=True)


def check_marks(model, report):
    """Every touched module is in a red box; every join is drawn; skip edges are blue."""
    summary = report.picture()
    dot = report.to_dot()
    nodes, edges = parse_dot(dot)
    # Every zeroed node of the plan is a box of kind zeroed, labelled with its module.
    zeroed_boxes = {n.members[0]: n for n in summary.nodes if n.kind == "zeroed"}
    assert set(zeroed_boxes) == {name for e in report.plan.entries for name in e.nodes}
    assert {n.module for n in zeroed_boxes.values()} == set(report.modules)
    for box in zeroed_boxes.values():
        assert attr(nodes[box.id], "class") == "zeroed"
        assert box.module in attr(nodes[box.id], "tooltip")
    assert len([a for a in nodes.values() if attr(a, "class") == "zeroed"]) == len(zeroed_boxes)
    # Every additive merge the analysis saw is drawn, as a join or as a plain merge.
    view = GraphView(capture(model), model)
    for join in view.joins():
        box = summary.node_of(join.merge.name)
        assert box is not None, join.merge.name
        assert box.kind == ("join" if join.ok else "merge")
        assert attr(nodes[box.id], "class") == box.kind
        if join.ok:
            # ...and it receives exactly one skip edge, from the fork or the projection.
            into = [(s, style) for s, d, style in edges if d == box.id and is_skip_style(style)]
            assert len(into) == 1, join.merge.name
            src = summary.nodes[int(into[0][0][1:])]
            if join.skip_kind == "identity":
                assert join.fork.name in src.members
            else:
                assert src.kind == "skip_path"
                assert {n.name for n in join.skip_layers} <= set(src.members)
    # Skip edges are drawn distinctly from value edges, and only skip edges are.
    skip_edges = [e for e in summary.edges if e.kind == "skip"]
    drawn_skips = [(s, d) for s, d, style in edges if is_skip_style(style)]
    assert sorted(drawn_skips) == sorted((e.src, e.dst) for e in skip_edges)
    plain = [style for s, d, style in edges if (s, d) not in set(drawn_skips)]
    assert not any("dashed" in style for style in plain)
    assert 'id="legend"' in dot and "residual join" in dot and "skip path" in dot
    return summary, nodes, edges


def test_resnet18_marks_every_zeroed_bn_join_and_skip(resnet18_report):
    model, report = resnet18_report
    summary, nodes, _ = check_marks(model, report)
    assert len([n for n in summary.nodes if n.kind == "join"]) == 8
    projections = [n for n in summary.nodes if n.kind == "skip_path"]
    assert sorted(n.group for n in projections) == ["layer2.0", "layer3.0", "layer4.0"]
    assert all(set(n.members) == {f"{n.group.replace('.', '_')}_downsample_0",
                                  f"{n.group.replace('.', '_')}_downsample_1"}
               for n in projections)
    # Blocks are clusters named after the module and its class.
    assert summary.groups["layer1.0"] == "BasicBlock"
    assert 'subgraph "cluster_layer1.0"' in report.to_dot()
    # Plain runs are collapsed: far fewer boxes than graph nodes.
    assert len(summary.nodes) < 60


def test_gpt_marks_attention_and_mlp_projections():
    model = GPT(n_layer=3)
    report = zero_init_pass(model, rule="residual_branch_last", dry_run=True)
    summary, _, _ = check_marks(model, report)
    zeroed = sorted(n.module for n in summary.nodes if n.kind == "zeroed")
    assert zeroed == sorted(f"h.{i}.{m}.c_proj" for i in range(3) for m in ("attn", "mlp"))
    # The attention internals (split, views, SDPA) are one box per block, named by layers.
    boxes = [n for n in summary.nodes if "scaled_dot_product_attention" in " ".join(n.lines)]
    assert [n.group for n in boxes] == ["h.0", "h.1", "h.2"]
    assert all("attn.c_attn" in " ".join(n.lines) for n in boxes)


def test_left_alone_candidates_and_merges_have_notes_with_reasons():
    model = Mixed()
    report = zero_init_pass(model, rule=ResidualBranchLast() | OutputLayer(), dry_run=True)
    summary, nodes, edges = check_marks(model, report)
    assert sorted(report.modules) == ["fc2", "head", "p1"]
    by_member = {m: n for n in summary.nodes for m in n.members}
    assert by_member["sigmoid"].kind == "skipped" and by_member["sigmoid"].left_alone
    assert by_member["add_1"].kind == "merge" and by_member["add_1"].left_alone  # parallel
    assert by_member["add_3"].kind == "merge" and by_member["add_3"].left_alone  # FPN-like
    assert by_member["add"].kind == "join" and not by_member["add"].left_alone
    notes = {e.src: summary.nodes[int(e.dst[1:])] for e in summary.edges if e.kind == "note"}
    assert {summary.nodes[int(k[1:])].members[0] for k in notes} == {"sigmoid", "add_1", "add_3"}
    for src, note in notes.items():
        reason = next(s.reason for s in report.skipped
                      if s.node in summary.nodes[int(src[1:])].members)
        assert note.detail == reason
        assert attr(nodes[note.id], "class") == "note"
    assert "RepVGG" in " ".join(l for n in notes.values() for l in n.lines)
    # A focused picture keeps the notes of the boxes in focus only.
    focused, _ = parse_dot(report.to_dot(focus="g"))
    shown_notes = [summary.nodes[int(i[1:])] for i in focused
                   if summary.nodes[int(i[1:])].kind == "note"]
    assert [n.detail for n in shown_notes] == [
        next(s.reason for s in report.skipped if s.node == "sigmoid")]
    assert "rankdir=LR" in report.to_dot(rankdir="LR")


def test_title_and_labels_say_what_the_table_says():
    class Net(nn.Module):  # one zeroed layer, one candidate left alone
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(8, 8, bias=False)
            self.gated = Gated()

        def forward(self, x):
            return self.gated(x + self.fc1(x))

    dry = zero_init_pass(Net(), dry_run=True)
    title = dry.picture().title
    assert title == ("Net: rule residual_branch_last would zero (dry run) 1 parameter in "
                     "1 module; 1 candidate left alone")
    assert "would zero (dry run) 1 parameter in 1 module," in dry.table()
    assert "1 candidate left alone" in dry.table()
    (zeroed,) = [n for n in dry.picture().nodes if n.kind == "zeroed"]
    assert zeroed.lines[-1] == "zeroed: weight 8x8"  # the shape, as the table's zeroed column
    assert "weight 8x8" in dry.table()
    applied = zero_init_pass(Net())
    assert applied.picture().title.startswith("Net: rule residual_branch_last zeroed 1 parameter")
def check_acyclic_and_once(summary):
    """Boxes in graph order with every edge pointing forward (so no cycle), and every FX
    data node drawn exactly once."""
    order = {n.id: i for i, n in enumerate(summary.nodes)}
    assert all(order[e.src] < order[e.dst] for e in summary.edges if e.kind != "note")
    members = [m for n in summary.nodes for m in n.members if n.kind != "output"]
    assert len(members) == len(set(members))


def test_squeeze_excite_collapses_without_cycles():
    model = SEResNet()
    report = zero_init_pass(model, dry_run=True)
    summary, _, _ = check_marks(model, report)
    check_acyclic_and_once(summary)


class InnerBlock(nn.Module):  # a residual block whose fork is computed inside it
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        y = x * 2
        return y + self.fc(torch.relu(torch.sigmoid(torch.tanh(-y))))


class ReEntered(nn.Module):
    """`tanh` feeds `mul_1` directly and through the inner block, drawn as another group:
    as one box, fc0 -> tanh -> mul_1 would point into the block and back at itself."""

    def __init__(self):
        super().__init__()
        self.fc0, self.inner, self.fc2 = nn.Linear(8, 8), InnerBlock(), nn.Linear(8, 8)

    def forward(self, x):
        p = torch.tanh(self.fc0(x))
        return x + self.fc2(p * self.inner(p))


class HalfBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.f1, self.f2 = nn.Linear(8, 8), nn.Linear(8, 8)
        self.p, self.bil = nn.Linear(8, 8), nn.Bilinear(8, 8, 8)

    def forward(self, x):
        return x + self.f2(torch.relu(self.f1(x)))


class Crossed(nn.Module):
    """Runs of two blocks feed each other: A.p -> B.bil and B.p -> A.bil. Each run is
    convex alone, but as two boxes they would point at each other."""

    def __init__(self):
        super().__init__()
        self.A, self.B = HalfBlock(), HalfBlock()

    def forward(self, x):
        a1, b1 = self.A.p(x), self.B.p(x)
        a2, b2 = self.A.bil(a1, b1), self.B.bil(b1, a1)
        return self.A(a2 * 2), self.B(b2 * 2)


@pytest.mark.parametrize("model, boxes", [
    # A run that a path leaves and re-enters is split alone; the block's larger run on the
    # same loop stays one box (splitting the largest run on the loop would split both).
    (ReEntered, {"fc0": ("", ("fc0",)), "tanh": ("", ("tanh",)), "mul_1": ("", ("mul_1",)),
                 "relu": ("inner", ("neg", "tanh_1", "sigmoid", "relu"))}),
    # Of two convex runs that feed each other, the earlier (block A's) is split.
    (Crossed, {"a_p": ("A", ("a_p",)), "a_bil": ("A", ("a_bil",)),
               "b_p": ("B", ("b_p", "b_bil"))}),
], ids=["re-entered", "crossed"])
def test_runs_that_would_draw_a_cycle_are_split(model, boxes):
    model = model()
    summary, _, _ = check_marks(model, zero_init_pass(model, dry_run=True))
    check_acyclic_and_once(summary)
    assert {name: (summary.node_of(name).group, summary.node_of(name).members)
            for name in boxes} == boxes


def test_summary_is_plain_data_and_round_trips(resnet18_report):
    _, report = resnet18_report
    summary = report.picture()
    data = json.loads(json.dumps(summary.to_dict()))
    again = picture.GraphSummary.from_dict(data)
    assert again == summary
    assert again.to_dot() == summary.to_dot()


def test_picture_is_built_lazily_and_once(monkeypatch):
    calls = []
    real = picture.summarize
    monkeypatch.setattr(zeta_fx.report.report, "summarize",  # where the report looks it up
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    report = zero_init_pass(SEResNet(), dry_run=True)
    assert calls == []  # the pass itself builds nothing for the picture
    first = report.to_dot()
    assert report.to_dot() == first and len(calls) == 1


def test_plan_without_a_graph_says_how_to_get_one():
    model = SEResNet()
    plan = zero_init_pass(model, dry_run=True).plan
    loaded = ZeroInitPlan.from_json(plan.to_json())
    assert loaded == plan and pickle.loads(pickle.dumps(plan)) == plan  # plain data
    with pytest.raises(RenderError, match=r"applying a plan.*dry_run=True"):
        loaded.apply(SEResNet()).to_dot()
    with pytest.raises(RenderError, match=r"applying a plan"):
        plan.apply(SEResNet()).to_dot()


# -- DOT (zeta_fx.report.picture.dot) ---------------------------------------------------------

def test_focus_draws_one_stage_and_its_neighbours(resnet18_report):
    _, report = resnet18_report
    nodes, _ = parse_dot(report.to_dot(focus="layer2"))
    summary = report.picture()
    shown = [summary.nodes[int(i[1:])] for i in nodes]
    inside = [n for n in shown if n.group.startswith("layer2")]
    assert {n.group for n in inside} == {"layer2.0", "layer2.1"}
    assert len(shown) - len(inside) == 3  # the fork before it, the boxes just after
    with pytest.raises(ValueError, match="matches no module"):
        report.to_dot(focus="nope")


# -- rendering (zeta_fx.report.picture.render) ------------------------------------------------

def test_draw_without_graphviz_writes_dot_and_says_how(tmp_path, monkeypatch, caplog):
    report = zero_init_pass(SEResNet(), dry_run=True)
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING, logger="zeta_fx"):
        result = report.draw(tmp_path / "model.svg")
    assert not result.rendered and result.path == tmp_path / "model.dot"
    assert result.command == f"dot -Tsvg {tmp_path / 'model.dot'} -o {tmp_path / 'model.svg'}"
    assert (tmp_path / "model.dot").read_text() == report.to_dot()
    assert not (tmp_path / "model.svg").exists()
    assert "not installed" in str(result) and result.command in caplog.text


def test_draw_dot_suffix_and_bad_paths(tmp_path):
    report = zero_init_pass(SEResNet(), dry_run=True)
    result = report.draw(tmp_path / "g.gv")
    assert (result.rendered, result.format) == (False, "dot")
    assert (tmp_path / "g.gv").read_text() == report.to_dot()
    with pytest.raises(ValueError, match="suffix"):
        report.draw(tmp_path / "noext")


@needs_dot
def test_draw_renders_svg_and_png_with_graphviz(tmp_path, resnet18_report):
    _, report = resnet18_report
    svg = report.draw(tmp_path / "resnet18.svg")
    assert svg.rendered and svg.format == "svg"
    text = (tmp_path / "resnet18.svg").read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    for module in report.modules:  # each zeroed BN is labelled in the picture
        assert f">{module.split('.', 2)[2]}<" in text
    assert text.count('class="node zeroed"') == len(report.modules)
    png = report.draw(tmp_path / "resnet18.png", focus="layer1")
    assert png.rendered and (tmp_path / "resnet18.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_dot
def test_draw_unknown_format_is_a_render_error(tmp_path):
    report = zero_init_pass(SEResNet(), dry_run=True)
    with pytest.raises(RenderError, match=r"'bogus'.*svg, png, pdf"):
        report.draw(tmp_path / "x.bogus")
    assert not (tmp_path / "x.bogus").exists()
