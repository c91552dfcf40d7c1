"""Hiding the copies' parameters from a compositional export (``zeta_fx.capture.hiding``).

In a structure of at least eight blocks, every block but the first two whose attributes
match a shown one's has its parameters and buffers out of its modules while the model is
exported: the export neither fakes nor lifts them. That is a bet on which blocks become
opaque calls; where it is lost (another representative, a call run inline, model code
reading a hidden weight), the export stops and runs again with nothing hidden. The oracle
is the same as for every compositional capture: the whole-model export gives the same
graph node for node, and the pass the same plan and rows. Which forwards ran shows whether
the bet was won (each representative once) or lost (the export stopped and ran again).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from zeta_fx.capture import capture

from test_compositional import (CALLS, X, Block, Named, Stack, assert_same_answer, seeded,
                                stack)


def test_a_long_stack_hides_its_copies_and_gives_the_same_graph_and_rows():
    whole_calls, part_calls = assert_same_answer(seeded(stack, 10))
    assert whole_calls == [f"b{i}" for i in range(10)]
    assert part_calls == ["b0"]  # no export stopped: the bet was won


def test_the_model_is_as_it_was_after_hiding():
    model = seeded(stack, 10)()
    before = [(name, id(t)) for name, t in model.named_parameters()]
    buffers = [(name, id(t)) for name, t in model.named_buffers()]
    state = [dict(vars(m)) for m in model.modules()]
    capture(model, example_inputs=(X,), method="export", compositional=True)
    assert [(name, id(t)) for name, t in model.named_parameters()] == before
    assert [(name, id(t)) for name, t in model.named_buffers()] == buffers
    assert [dict(vars(m)) for m in model.modules()] == state


class Slicing(nn.Module):
    """Block 6 is called on a narrower input: it cannot be a copy of block 0."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.blocks = nn.ModuleList(Block(f"b{i}") for i in range(10))

    def forward(self, x):
        x = self.embed(x)
        for i, block in enumerate(self.blocks):
            x = block(x[:, :3] if i == 6 else x)
        return x


def test_a_hidden_block_called_on_other_shapes_stops_the_export_and_is_traced_again():
    _, part_calls = assert_same_answer(seeded(Slicing))
    # stopped at b6 (hidden, needs its own trace), then exported with nothing hidden; b7
    # takes b6's contiguous output where b6 took a strided slice: another representative
    assert part_calls == ["b0", "b0", "b6", "b7"]


class Rolled(Named):
    """An integer attribute the forward reads: the bet takes integers for indices."""

    def __init__(self, name: str, shift: int):
        super().__init__(name)
        self.shift = shift

    def forward(self, x):
        CALLS.append(self)
        return x + torch.roll(self.fc(x), self.shift, dims=-1)


def test_a_per_layer_integer_read_by_the_forward_loses_the_bet_and_keeps_the_answer():
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 8),
                             *[Rolled(f"b{i}", 1 if i < 5 else 2) for i in range(9)])
    _, part_calls = assert_same_answer(build, (torch.randn(3, 8),))
    assert part_calls == ["b0", "b0", "b5"]


class ReadsAWeight(nn.Module):
    """The model's own code reads a hidden block's weight (and checks a bias for None)."""

    def __init__(self, use: bool):
        super().__init__()
        self.use = use
        self.stack = Stack([Block(f"b{i}") for i in range(9)])

    def forward(self, x):
        h = self.stack(x)
        last = self.stack.blocks[8].fc2
        if last.bias is not None and self.use:
            h = h + last.weight.sum()
        return h


def test_model_code_using_a_hidden_weight_stops_the_export_and_keeps_the_answer():
    _, part_calls = assert_same_answer(seeded(ReadsAWeight, True))
    assert part_calls == ["b0", "b0"]  # stopped once, at the use of blocks.8.fc2.weight


def test_model_code_reading_a_hidden_bias_stops_the_export_and_keeps_the_answer():
    # export's tracer asks every module attribute it reads whether it is a module, and a
    # stand-in cannot answer what it is without lying about a tensor: the bet is lost
    _, part_calls = assert_same_answer(seeded(ReadsAWeight, False))
    assert part_calls == ["b0", "b0"]


class CallsASubmodule(nn.Module):
    """The model's own code calls a submodule of a hidden block after the stack ran."""

    def __init__(self):
        super().__init__()
        self.stack = Stack([Block(f"b{i}") for i in range(9)])

    def forward(self, x):
        return self.stack(x) + self.stack.head(self.stack.blocks[7].norm(x))


def test_model_code_calling_a_hidden_blocks_submodule_stops_the_export_and_keeps_the_answer():
    # the submodules of a hidden block are back while the forward runs, their weights not
    _, part_calls = assert_same_answer(seeded(CallsASubmodule))
    assert part_calls == ["b0", "b0"]


def test_the_export_does_not_see_a_hidden_blocks_submodules(monkeypatch):
    seen: list[set[str]] = []
    real_export = torch.export.export

    def export(model, *args, **kwargs):  # what the export enumerates before it runs
        seen.append({name for name, _ in model.named_modules()})
        return real_export(model, *args, **kwargs)
    monkeypatch.setattr(torch.export, "export", export)
    model = seeded(stack, 10)()
    capture(model, example_inputs=(X,), method="export", compositional=True)
    assert len(seen) == 1  # the bet was won
    assert {"blocks.0.fc1", "blocks.1.fc1", "blocks.2"} <= seen[0]
    assert not {f"blocks.{i}.{sub}" for i in range(2, 10) for sub in ("norm", "fc1", "fc2")
                } & seen[0]
    assert {f"blocks.{i}.fc1" for i in range(10)} <= {name for name, _ in model.named_modules()}


class View(Named):
    def forward(self, x):
        CALLS.append(self)
        return (x + self.fc(x)).transpose(0, 1).transpose(0, 1)


def test_a_representative_that_cannot_stand_for_its_copies_loses_the_bet():
    def build():
        torch.manual_seed(0)
        return nn.Sequential(*[View(f"b{i}") for i in range(8)])
    _, part_calls = assert_same_answer(build, (torch.randn(3, 8),))
    # b0 and b1 (shown) each return a view; b2 is hidden: stopped, all eight traced again
    assert part_calls == ["b0", "b1", *[f"b{i}" for i in range(8)]]


def test_alternating_flags_are_shown_up_front():
    def build():
        torch.manual_seed(0)
        return Stack([Block(f"b{i}", gated=i % 2 == 1) for i in range(10)])
    _, part_calls = assert_same_answer(build)
    assert part_calls == ["b0", "b1"]  # the gated blocks match b1, shown: no export stopped


class CountsParameters(nn.Module):
    """The model's own code enumerates its parameters (hidden ones would be missing)."""

    def __init__(self):
        super().__init__()
        self.stack = Stack([Block(f"b{i}") for i in range(9)])

    def forward(self, x):
        total = sum(p.numel() for p in self.parameters())
        buffers = len(list(self.buffers()))
        return self.stack(x) * (total % 1009 + buffers + 1)


def test_model_code_using_the_parameters_it_enumerates_stops_the_export(caplog):
    with caplog.at_level(logging.INFO, logger="zeta_fx.capture.methods"):
        _, part_calls = assert_same_answer(seeded(CountsParameters))
    # p.numel() of a hidden parameter, before any block ran: stopped, exported again
    assert part_calls == ["b0"]
    assert "was used while hidden from the export" in caplog.text


class ListsParameters(nn.Module):
    """The model's code counts its parameters and buffers without using them."""

    def __init__(self):
        super().__init__()
        self.stack = Stack([Block(f"b{i}") for i in range(9)])

    def forward(self, x):
        names = [name for name, _ in self.named_parameters()]
        return self.stack(x) * (len(names) + len(list(self.buffers())))


def test_model_code_counting_its_parameters_sees_them_all_while_they_are_hidden(caplog):
    with caplog.at_level(logging.INFO, logger="zeta_fx.capture.methods"):
        _, part_calls = assert_same_answer(seeded(ListsParameters))
    assert part_calls == ["b0"]
    assert "compositional export of" not in caplog.text  # nothing stopped it


class AsksTypes(nn.Module):
    """The model's code asks what each parameter is and branches on the answer."""

    def __init__(self):
        super().__init__()
        self.stack = Stack([Block(f"b{i}") for i in range(9)])

    def forward(self, x):
        tensors = sum(isinstance(p, torch.Tensor) for p in self.parameters())
        return self.stack(x) * (tensors % 1009 + 1)


def test_model_code_asking_a_hidden_parameter_its_type_stops_the_export(caplog):
    # the stand-in is no tensor: answering False would change the constant in the graph
    with caplog.at_level(logging.INFO, logger="zeta_fx.capture.methods"):
        _, part_calls = assert_same_answer(seeded(AsksTypes))
    assert part_calls == ["b0"]
    assert "was used while hidden from the export" in caplog.text


def _reading_hook(mod, args):
    return (args[0] + sum(p.sum() for p in mod.parameters()),)


def test_a_pre_hook_of_the_model_sees_every_parameter(caplog):
    # the stand-ins go in before the model's own pre-hooks run: a hook that sums the
    # parameters uses a hidden one and stops the export, instead of summing fewer
    def build():
        torch.manual_seed(0)
        model = stack(10)
        model.register_forward_pre_hook(_reading_hook)
        return model
    with caplog.at_level(logging.INFO, logger="zeta_fx.capture.methods"):
        _, part_calls = assert_same_answer(build)
    assert part_calls == ["b0"]  # stopped in the hook, before any block ran
    assert "was used while hidden from the export" in caplog.text


def test_a_global_module_hook_turns_hiding_off():
    # a global pre-hook runs before any hook of the model: nothing is hidden from it
    handle = nn.modules.module.register_module_forward_pre_hook(
        lambda mod, args: _reading_hook(mod, args) if isinstance(mod, Stack) else None)
    try:
        _, part_calls = assert_same_answer(seeded(stack, 10))
    finally:
        handle.remove()
    assert part_calls == ["b0"]  # no bet made, none lost
