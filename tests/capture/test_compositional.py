"""Compositional export: each distinct repeated block is exported once, its copies stitched in.

The oracle is the whole-model export (``compositional=False``): both graphs must be the same
node for node (op, name, target, arguments, ``nn_module_stack`` paths, recorded shapes), and
the pass must make the same plan and the same rows from both. The models here draw the
cases where a repeated block is *not* the same structure (a patched forward, a hook on one
copy, a per-layer flag, another dtype, other input shapes, a shared parameter), blocks that
cannot be summarised (one writing its input, one returning a view of it), and joins that
cross block boundaries. How often each block's forward ran during capture shows which
copies were captured on their own.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from zeta_fx import zero_init_pass
from zeta_fx.capture import capture

from claims import assert_blocks_equal_skip, check_pass, fixed_inputs

NAMES: dict[int, str] = {}
CALLS: list[nn.Module] = []  # the blocks whose forward ran (no attribute read: a name
# read in the forward would make every block another structure)


class Block(nn.Module):
    """A pre-norm residual MLP block that counts its forward calls (by its own name)."""

    def __init__(self, name: str, dim: int = 8, gated: bool = False, scale: float = 1.0):
        super().__init__()
        self.gated, self.scale = gated, scale
        NAMES[id(self)] = name
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        CALLS.append(self)
        h = self.fc2(torch.relu(self.fc1(self.norm(x))))
        if self.gated:
            h = h * torch.sigmoid(h)
        if mask is not None:
            h = h * mask
        return x + self.scale * h


class Stack(nn.Module):
    def __init__(self, blocks: list[nn.Module], dim: int = 8):
        super().__init__()
        self.embed = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, mask=mask)
        return self.head(h)


def stack(n: int = 6, **kw) -> Stack:
    return Stack([Block(f"b{i}", **kw) for i in range(n)])


X = torch.randn(2, 5, 8)


def graph_signature(gm) -> list[tuple]:
    out = []
    for n in gm.graph.nodes:
        stack_ = n.meta.get("nn_module_stack") or {}
        val = n.meta.get("val")
        out.append((n.op, n.name, str(n.target), str(n.args), str(n.kwargs),
                    tuple(str(v[0]) for v in stack_.values()),
                    tuple(val.shape) if isinstance(val, torch.Tensor) else None))
    return out


def both(model: nn.Module, args=(X,), kwargs=None):
    """The whole-model and the compositional export, and which blocks ran for each."""
    CALLS.clear()
    whole = capture(model, example_inputs=args, example_kwargs=kwargs, method="export")
    whole_calls = [NAMES[id(m)] for m in CALLS]
    CALLS.clear()
    parts = capture(model, example_inputs=args, example_kwargs=kwargs, method="export",
                    compositional=True)
    return whole, parts, whole_calls, [NAMES[id(m)] for m in CALLS]


def rows(report) -> tuple:
    return (report.plan.to_json(), [dict(r) for r in report.touched],
            [(s.node, s.module, s.reason) for s in report.skipped])


def assert_same_answer(model_fn, args=(X,), kwargs=None) -> tuple[list[str], list[str]]:
    whole, parts, whole_calls, part_calls = both(model_fn(), args, kwargs)
    assert graph_signature(parts) == graph_signature(whole)
    a = zero_init_pass(model_fn(), dry_run=True, capture="export", example_inputs=args,
                       example_kwargs=kwargs, compositional=False)
    b = zero_init_pass(model_fn(), dry_run=True, capture="export", example_inputs=args,
                       example_kwargs=kwargs)
    assert rows(b) == rows(a)
    return whole_calls, part_calls


def seeded(fn, *a, **kw):
    def build():
        torch.manual_seed(0)
        return fn(*a, **kw)
    return build


def test_equal_blocks_are_captured_once_and_give_the_same_graph_and_rows():
    whole_calls, part_calls = assert_same_answer(seeded(stack))
    assert whole_calls == [f"b{i}" for i in range(6)]
    assert part_calls == ["b0"]  # the five others were opaque calls, stitched in


def test_the_pass_on_a_compositional_capture_makes_every_block_the_identity():
    torch.manual_seed(0)
    model = stack()
    report = check_pass(model, modules={f"blocks.{i}.fc2" for i in range(6)}, inputs=(X,),
                        capture="export", example_inputs=(X,))
    assert_blocks_equal_skip(model, [(b, lambda x, mask=None: x) for b in model.blocks],
                             fixed_inputs((X,)))
    assert len(report.modules) == 6


def test_keyword_tensor_arguments_are_mapped_to_each_copy():
    mask = torch.rand(2, 5, 1)
    whole_calls, part_calls = assert_same_answer(seeded(stack), (X,), {"mask": mask})
    assert part_calls == ["b0"]


def test_a_per_layer_flag_makes_two_structures():
    def build():
        torch.manual_seed(0)
        return Stack([Block(f"b{i}", gated=i % 2 == 1) for i in range(6)])
    _, part_calls = assert_same_answer(build)
    assert part_calls == ["b0", "b1"]  # one of each


def test_a_per_layer_constant_read_by_the_forward_makes_another_structure():
    def build():
        torch.manual_seed(0)
        return Stack([Block(f"b{i}", scale=1.0 if i < 3 else 0.5) for i in range(6)])
    _, part_calls = assert_same_answer(build)
    assert part_calls == ["b0", "b3"]


class Optional_(Block):
    """Reads an attribute only some copies hold, with a default (``getattr(self, ..., d)``)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        CALLS.append(self)
        h = self.fc2(torch.relu(self.fc1(self.norm(x))))
        if getattr(self, "boost", False):
            h = h * 3
        return x + h


def test_an_attribute_only_one_copy_holds_makes_another_structure():
    # the representative's read finds nothing; the copy that holds it reads another value
    def build():
        torch.manual_seed(0)
        model = Stack([Optional_(f"b{i}") for i in range(6)])
        model.blocks[4].boost = True
        return model
    _, part_calls = assert_same_answer(build)
    assert part_calls == ["b0", "b4"]


def test_a_forward_patched_on_one_copy_runs_inline():
    def build():
        torch.manual_seed(0)
        model = stack()
        block = model.blocks[2]
        original = block.forward
        block.forward = lambda x, mask=None: original(x, mask) * 2  # instance-patched
        return model
    _, part_calls = assert_same_answer(build)
    assert "b2" in part_calls and part_calls.count("b0") == 1


def test_a_hook_on_one_copy_runs_it_inline():
    def build():
        torch.manual_seed(0)
        model = stack()
        model.blocks[4].fc1.register_forward_hook(lambda m, a, out: out * 0.5)
        return model
    _, part_calls = assert_same_answer(build)
    assert "b4" in part_calls


def test_a_copy_in_another_dtype_is_another_structure():
    def build():
        torch.manual_seed(0)
        model = stack()
        model.blocks[5].double()
        model.head.double()
        return model
    whole, parts, _, part_calls = both(build())
    assert graph_signature(parts) == graph_signature(whole)
    assert "b5" in part_calls


def test_copies_called_on_other_shapes_run_inline():
    class Pyramid(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block(f"b{i}") for i in range(4))

        def forward(self, x):
            for i, block in enumerate(self.blocks):
                x = block(x[:, : 5 - i] if i else x)
            return x
    _, part_calls = assert_same_answer(seeded(Pyramid))
    assert part_calls == ["b0", "b1", "b2", "b3"]


def test_a_parameter_shared_between_copies_keeps_them_inline():
    def build():
        torch.manual_seed(0)
        model = stack()
        model.blocks[3].fc1.weight = model.blocks[1].fc1.weight
        return model
    _, part_calls = assert_same_answer(build)
    assert {"b1", "b3"} <= set(part_calls)


class Named(nn.Module):
    """A block with one linear layer, known by ``name`` in :data:`CALLS`."""

    def __init__(self, name: str):
        super().__init__()
        NAMES[id(self)] = name
        self.fc = nn.Linear(8, 8)


class Odd(Named):
    """A residual block that cannot stand for another: it writes its input, returns a view,
    or returns one tensor twice."""

    def __init__(self, name: str, kind: str):
        super().__init__(name)
        self.kind = kind

    def forward(self, x):
        CALLS.append(self)
        if self.kind == "writes_input":
            x.mul_(2)  # a copy standing in would not
        h = x + self.fc(x)
        if self.kind == "returns_view":
            return h.transpose(0, 1).transpose(0, 1)
        return (h, h) if self.kind == "returns_twice" else h


@pytest.mark.parametrize("kind, calls", [
    # the first ran as a representative, was found to write its input, and the model was
    # captured again with those blocks inline
    ("writes_input", ["b0", "b0", "b1", "b2", "b3"]),
    # each returns a view: none can stand in for another (fresh outputs are not views)
    ("returns_view", ["b0", "b1", "b2", "b3"]),
    # one tensor returned twice: fresh outputs would be two
    ("returns_twice", ["b0", "b1", "b2", "b3"]),
])
def test_blocks_that_cannot_be_summarised_run_inline(kind, calls):
    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Odd(f"b{i}", kind) for i in range(4))

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
                x = x[0] + x[1] if isinstance(x, tuple) else x
            return x
    _, part_calls = assert_same_answer(seeded(Chain), (torch.randn(3, 8),))
    assert part_calls == calls


class LongSkip(nn.Module):
    """A join around several blocks (a UNet's long skip) and one across two blocks."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(Block(f"b{i}") for i in range(4))
        self.out = nn.Linear(8, 8)

    def forward(self, x):
        h0 = self.blocks[0](x)
        h = self.blocks[2](self.blocks[1](h0))
        h = h0 + self.out(h)  # spans blocks 1 and 2
        return x + self.blocks[3](h)


def test_joins_that_cross_block_boundaries_are_still_found():
    _, part_calls = assert_same_answer(seeded(LongSkip))
    assert part_calls == ["b0", "b1"]  # b0 takes the raw input (no grad), b1 does not
    report = zero_init_pass(seeded(LongSkip)(), dry_run=True, capture="export",
                            example_inputs=(X,))
    assert "out" in report.modules  # the long skip's branch end, outside every block


def test_a_block_called_twice_is_stitched_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block(f"b{i}") for i in range(3))

        def forward(self, x):
            for block in [*self.blocks, self.blocks[1]]:
                x = block(x)
            return x
    _, part_calls = assert_same_answer(seeded(Twice))
    assert part_calls == ["b0", "b1"]  # b0 takes the raw input; b1's second call is a copy


def test_capture_leaves_no_trace_on_the_blocks():
    model = seeded(stack)()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    forwards = [vars(b).get("forward") for b in model.blocks]
    classes = [type(m) for m in model.modules()]
    capture(model, example_inputs=(X,), method="export", compositional=True)
    assert [vars(b).get("forward") for b in model.blocks] == forwards == [None] * 6
    assert [type(m) for m in model.modules()] == classes
    assert not hasattr(nn.Module, "__getattribute__") or \
        nn.Module.__getattribute__ is object.__getattribute__
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        CALLS.append(self)
        return x + self.fc(x)


class Derived(Base):
    """Chosen beside its base class, and calling the base's forward through super()."""

    def forward(self, x):
        return super().forward(x) * 1.0


def test_a_block_calling_its_base_class_forward_is_one_call():
    def build():
        torch.manual_seed(0)
        blocks = [Base(), Base(), Derived(), Derived(), Derived()]
        for i, b in enumerate(blocks):
            NAMES[id(b)] = f"b{i}"
        return nn.Sequential(*blocks)
    _, part_calls = assert_same_answer(build, (torch.randn(3, 8),))
    assert part_calls == ["b0", "b1", "b2"]  # b0's input is raw (no grad), b1 and b2 represent


def test_the_class_forward_keeps_its_signature_while_composing():
    import inspect
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block(f"b{i}") for i in range(3))

        def forward(self, x):
            seen.append(list(inspect.signature(self.blocks[1].forward).parameters))
            for block in self.blocks:
                x = block(x)
            return x
    capture(seeded(Probe)(), example_inputs=(X,), method="export", compositional=True)
    assert seen == [["x", "mask"]]


class Processor:
    """A stateless helper object each block holds its own instance of (as diffusers'
    attention processors are)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.scale


class WithProcessor(Named):
    def __init__(self, name: str, scale: float):
        super().__init__(name)
        self.processor = Processor(scale)

    def forward(self, x):
        CALLS.append(self)
        return x + self.processor(self.fc(x))


def test_equal_helper_objects_are_one_structure_and_unequal_ones_two():
    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(8, 8)
            self.blocks = nn.ModuleList(WithProcessor(f"b{i}", 1.0 if i < 3 else 2.0)
                                        for i in range(5))

        def forward(self, x):
            x = self.embed(x)
            for block in self.blocks:
                x = block(x)
            return x
    _, part_calls = assert_same_answer(seeded(Chain), (torch.randn(3, 8),))
    assert part_calls == ["b0", "b3"]  # b1, b2 copies of b0; b4 of b3 (another scale)


def test_a_block_whose_parameters_are_read_before_it_runs_reads_its_own():
    # a root pre-hook reads every parameter before any block runs: the representative's
    # get_attr nodes are made there, outside its segment, and each copy must still read
    # its own parameters (they read the representative's)
    def build():
        torch.manual_seed(0)
        model = stack(4)
        model.register_forward_pre_hook(
            lambda mod, args: (args[0] + sum(p.sum() for p in mod.parameters()),))
        return model
    _, part_calls = assert_same_answer(build)
    assert part_calls == ["b0"]


class Shared(Named):
    """Holds the model in a plain attribute (every copy the same object) and reads the
    model's own attributes in its forward: state outside the block's modules."""

    def __init__(self, name: str, root: nn.Module, counts: bool = False):
        super().__init__(name)
        self.counts = counts
        object.__setattr__(self, "root", root)  # not a submodule: no cycle in the tree

    def forward(self, x):
        CALLS.append(self)
        root = object.__getattribute__(self, "root")
        if self.counts:  # the block counts its calls on the model
            root.calls = root.calls + 1
            return x + self.fc(x)
        return x + self.fc(x) * (root.current + 1)  # the layer the model is at


class Tracked(nn.Module):
    def __init__(self, counts: bool = False):
        super().__init__()
        self.current, self.calls = 0, 0
        self.blocks = nn.ModuleList(Shared(f"b{i}", self, counts) for i in range(5))

    def forward(self, x):
        self.calls = 0
        for i, block in enumerate(self.blocks):
            self.current = i  # the model's code sets what its blocks read
            x = block(x)
        return x * self.calls if self.calls > 3 else x


def test_a_block_reading_the_models_attributes_sees_each_calls_value():
    # `root.current` is 0..4, baked into each layer's graph as a constant: each value read
    # is another representative; the copies took the first block's graph before
    whole_calls, part_calls = assert_same_answer(seeded(Tracked))
    assert part_calls == whole_calls


def test_a_block_writing_the_models_attributes_is_exported_inline():
    # the count the model branches on after the stack: an opaque copy would not count
    whole_calls, part_calls = assert_same_answer(seeded(Tracked, True))
    assert part_calls[-5:] == whole_calls


class Config:
    """A plain object every block holds (as transformers' blocks hold their config)."""

    def __init__(self):
        self.step, self.scale = 0, 1.0


class Stateful(Named):
    """Branches on state kept outside its modules: a class attribute it counts calls in
    (``"class"``), a step counted in the config it shares (``"shared"``), or a scale the
    model's code sets in that config before each call (``"set"``)."""

    calls = 0

    def __init__(self, name: str, config: Config, how: str):
        super().__init__(name)
        self.config, self.how = config, how

    def forward(self, x):
        CALLS.append(self)
        if self.how == "class":
            type(self).calls += 1
            return x + self.fc(x) * type(self).calls
        if self.how == "shared":
            self.config.step += 1
            return x + self.fc(x) * self.config.step
        return x + self.fc(x) * self.config.scale


class StatefulStack(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.config = Config()
        self.how = how
        self.blocks = nn.ModuleList(Stateful(f"b{i}", self.config, how) for i in range(5))

    def forward(self, x):
        Stateful.calls, self.config.step = 0, 0
        for i, block in enumerate(self.blocks):
            if self.how == "set":
                self.config.scale = 1.0 + i
            x = block(x)
        return x


@pytest.mark.parametrize("how", ["class", "shared", "set"])
def test_state_outside_every_module_is_read_at_each_call(how):
    # each call reads another value: the whole-model export bakes 1..5 (or 1.0..5.0) into
    # the five layers; an opaque copy would have taken the first block's constant
    whole_calls, part_calls = assert_same_answer(seeded(StatefulStack, how))
    assert part_calls[-5:] == whole_calls


class Scaler(nn.Module):
    """A parameterless helper outside the model, held by every block in a plain attribute."""

    def __init__(self):
        super().__init__()
        self.scale = 1.0


class Helped(Named):
    def __init__(self, name: str, helper: Scaler):
        super().__init__(name)
        object.__setattr__(self, "helper", helper)  # not registered: outside the model

    def forward(self, x):
        CALLS.append(self)
        return x + self.fc(x) * object.__getattribute__(self, "helper").scale


class HelpedStack(nn.Module):
    def __init__(self):
        super().__init__()
        helper = Scaler()
        object.__setattr__(self, "helper", helper)
        self.blocks = nn.ModuleList(Helped(f"b{i}", helper) for i in range(5))

    def forward(self, x):
        for i, block in enumerate(self.blocks):
            object.__getattribute__(self, "helper").scale = 1.0 + i
            x = block(x)
        return x


def test_a_module_outside_the_model_read_by_a_block_is_read_at_each_call():
    whole_calls, part_calls = assert_same_answer(seeded(HelpedStack))
    assert part_calls[-5:] == whole_calls


class Swapping(nn.Module):
    """The model's code registers another activation before each call; its blocks call
    the model's (a submodule of the model, read through a back-reference)."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.blocks = nn.ModuleList(UsesRootAct(f"b{i}", self) for i in range(5))

    def forward(self, x):
        for i, block in enumerate(self.blocks):
            self.act = nn.ReLU() if i % 2 == 0 else nn.Tanh()
            x = block(x)
        return x


class UsesRootAct(Named):
    def __init__(self, name: str, root: nn.Module):
        super().__init__(name)
        object.__setattr__(self, "root", root)

    def forward(self, x):
        CALLS.append(self)
        return x + object.__getattribute__(self, "root").act(self.fc(x))


def test_a_submodule_of_the_model_swapped_between_calls_is_read_at_each_call():
    # b0 takes the raw input (no grad); b1 (Tanh) and b2 (ReLU) are two representatives,
    # b3 and b4 their copies (a fresh activation of the same class and settings is the
    # same); before, b2 to b4 were copies of b1 and called Tanh
    _, part_calls = assert_same_answer(seeded(Swapping))
    assert part_calls == ["b0", "b1", "b2"]


LAYER = 0  # a global the model sets before each call (``"set"``) or its blocks count in


class GlobalRead(Named):
    def __init__(self, name: str, counts: bool):
        super().__init__(name)
        self.counts = counts

    def forward(self, x):
        global LAYER
        CALLS.append(self)
        if self.counts:
            LAYER += 1
        return x + self.fc(x) * (LAYER + 1)


class GlobalStack(nn.Module):
    def __init__(self, counts: bool):
        super().__init__()
        self.counts = counts
        self.blocks = nn.ModuleList(GlobalRead(f"b{i}", counts) for i in range(5))

    def forward(self, x):
        global LAYER
        LAYER = 0
        for i, block in enumerate(self.blocks):
            if not self.counts:
                LAYER = i
            x = block(x)
        return x


@pytest.mark.parametrize("counts", [False, True], ids=["set", "counted"])
def test_a_global_the_forward_reads_is_read_at_each_call(counts):
    whole_calls, part_calls = assert_same_answer(seeded(GlobalStack, counts))
    assert part_calls[-5:] == whole_calls
