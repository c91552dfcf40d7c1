"""Plans under FSDP2 and DDP, on the CPU: two gloo processes on the loopback interface.

The plan is made once on the meta device (nothing allocated), written as JSON, and applied
on every rank to a model that was built on the meta device, sharded with ``fully_shard``,
materialised with ``to_empty()`` and initialised. Each rank checks that its local shards
were written in place and that the full tensors equal a single-process pass.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from gloo_ranks import free_port, leave, rendezvous, run_ranks

from zeta_fx import init_pass, inits, zero_init_pass
from zeta_fx.errors import PlanMismatchError, UnsupportedWrapperError
from zeta_fx.models import GPT
from zeta_fx import ZeroInitPlan
from zeta_fx.rules import OutputLayer, ResidualBranchLast

pytestmark = [pytest.mark.slow,  # two spawned gloo processes
              pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="needs torch.distributed with gloo")]

WORLD = 2
TIMEOUT_S = 120  # whole run, both ranks; a hung collective fails the test instead of hanging it
RULE = ResidualBranchLast() | OutputLayer()


def make_gpt() -> GPT:
    return GPT(vocab_size=64, block_size=16, n_layer=2, n_head=2, dim=16)


def _reference() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Initial values, values after a direct single-process pass, and the zeroed names."""
    torch.manual_seed(0)
    model = make_gpt()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    params = zero_init_pass(model, RULE).params
    return initial, model.state_dict(), params


def _sharded_gpt(initial: dict[str, torch.Tensor]) -> GPT:
    """``make_gpt()`` built on meta, each block and the model ``fully_shard``-ed over the
    ranks, materialised with ``to_empty()``, and given ``initial`` (the "model's own init")
    shard by shard."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    with torch.device("meta"):
        model = make_gpt()
    for block in model.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.to_local().copy_(distribute_tensor(initial[name], p.device_mesh, p.placements,
                                                 src_data_rank=None).to_local())
    return model


def _check_fsdp2(rank: int, plan_json: str) -> None:
    from torch.distributed.tensor import DTensor

    initial, expected, zeroed = _reference()
    model = _sharded_gpt(initial)
    before = {name: (p, p.to_local().data_ptr(), p.to_local().clone())
              for name, p in model.named_parameters()}
    assert all(isinstance(p, DTensor) for p, _, _ in before.values())

    from torch.distributed.tensor.debug import CommDebugMode

    with torch.device("meta"):  # a plan for another architecture: refused on every rank
        wrong = zero_init_pass(GPT(vocab_size=64, block_size=16, n_layer=3, n_head=2, dim=16),
                               RULE, dry_run=True).plan
    with pytest.raises(PlanMismatchError, match=r"h\.2\.attn\.c_proj\.weight"):
        wrong.apply(model)
    assert all(torch.equal(p.to_local(), local) for p, _, local in before.values())

    plan = ZeroInitPlan.from_json(plan_json)
    with CommDebugMode() as comm:
        report = plan.apply(model)
    assert comm.get_total_counts() == 0, comm.get_comm_counts()  # no gather, no collective

    assert report.params == zeroed
    after = dict(model.named_parameters())
    for name, (param, ptr, local) in before.items():
        assert after[name] is param, f"rank {rank}: `{name}` was replaced"
        assert param.to_local().data_ptr() == ptr, f"rank {rank}: `{name}` was reallocated"
        if name not in zeroed:
            assert torch.equal(param.to_local(), local), f"rank {rank}: `{name}` changed"
    full = {name: p.full_tensor() for name, p in model.named_parameters()}
    assert full.keys() == expected.keys()
    for name, value in full.items():
        assert torch.equal(value, expected[name]), f"rank {rank}: `{name}` != single-process"
    zero_from_init = {n for n, v in initial.items() if not v.any()}  # LayerNorm biases
    assert {n for n, v in full.items() if not v.any()} == set(zeroed) | zero_from_init
    assert not zero_from_init & set(zeroed)

    with pytest.raises(UnsupportedWrapperError, match="meta device"):
        zero_init_pass(model, RULE)  # a sharded model cannot be traced: plan on meta instead
    assert all(torch.equal(p.full_tensor(), expected[n]) for n, p in model.named_parameters())


def _check_fsdp2_draws(rank: int) -> None:
    """A scaled_normal plan made on meta draws, on each rank's shards, exactly the tensors a
    single-process pass with the same seed draws (each tensor drawn whole, then sliced)."""
    init = inits.scaled_normal(std=0.02)
    torch.manual_seed(0)
    single = make_gpt()
    initial = {k: v.clone() for k, v in single.state_dict().items()}
    drawn = init_pass(single, RULE, init=init, seed=11).params
    with torch.device("meta"):
        plan = init_pass(make_gpt(), RULE, init=init, seed=11, dry_run=True).plan
    model = _sharded_gpt(initial)
    report = ZeroInitPlan.from_json(plan.to_json()).apply(model)
    assert report.params == drawn and any(e.action.kind == "normal" for e in plan.entries)
    expected = single.state_dict()
    for name, p in model.named_parameters():
        assert torch.equal(p.full_tensor(), expected[name]), f"rank {rank}: `{name}` differs"


def _check_ddp(rank: int) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    _, expected, zeroed = _reference()
    assert not any(name.startswith("module.") for name in zeroed)

    def fresh_ddp() -> DDP:
        torch.manual_seed(0)
        return DDP(make_gpt())

    # The pass on a DDP model traces the inner model and names FQNs as the user's model does.
    ddp = fresh_ddp()
    report = zero_init_pass(ddp, RULE)
    assert report.params == zeroed
    assert all(torch.equal(v, expected[k]) for k, v in ddp.module.state_dict().items())

    # A plan from the unwrapped model applies to the DDP-wrapped one ...
    torch.manual_seed(0)
    plain_plan = zero_init_pass(make_gpt(), RULE, dry_run=True).plan
    ddp = fresh_ddp()
    assert plain_plan.apply(ddp).params == zeroed
    assert all(torch.equal(v, expected[k]) for k, v in ddp.module.state_dict().items())

    # ... and a plan naming DDP's `module.` FQNs applies to the unwrapped model.
    prefixed = plain_plan.to_json().replace('"h.', '"module.h.').replace(
        '"lm_head.', '"module.lm_head.')
    assert '"module.h.0.attn.c_proj.weight"' in prefixed
    torch.manual_seed(0)
    plain = make_gpt()
    ZeroInitPlan.from_json(prefixed).apply(plain)
    assert all(torch.equal(v, expected[k]) for k, v in plain.state_dict().items())

    # DDP still trains after the pass: one step, gradients all-reduced across the ranks.
    out = ddp(torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(rank)))
    out.float().pow(2).mean().backward()
    grad = ddp.module.h[0].mlp.c_fc.weight.grad
    gathered = [torch.empty_like(grad) for _ in range(WORLD)]
    dist.all_gather(gathered, grad)
    assert torch.equal(gathered[0], gathered[1])


def _check_fsdp1_refused() -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP1

    torch.manual_seed(0)
    plan = zero_init_pass(make_gpt(), RULE, dry_run=True).plan
    wrapped = FSDP1(make_gpt(), device_id=torch.device("cpu"))
    for attempt in (lambda: plan.apply(wrapped), lambda: zero_init_pass(wrapped, RULE)):
        with pytest.raises(UnsupportedWrapperError, match=r"FSDP1 .*fully_shard.*nothing was"):
            attempt()


def _worker(rank: int, port: int, plan_json: str) -> None:
    rendezvous(port)
    torch.set_num_threads(1)  # two ranks share the runner's cores
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        _check_fsdp2(rank, plan_json)
        dist.barrier()
        _check_fsdp2_draws(rank)
        dist.barrier()
        _check_ddp(rank)
        dist.barrier()
        _check_fsdp1_refused()
        dist.barrier()
    finally:
        dist.destroy_process_group()
    leave()  # without the interpreter's teardown (see examples/meta_fsdp2_plan.py)


def test_meta_plan_applies_under_fsdp2_and_ddp_on_two_gloo_ranks():
    with torch.device("meta"):
        meta = make_gpt()
    report = zero_init_pass(meta, RULE, dry_run=True)
    assert all(p.is_meta for p in meta.parameters())
    _, _, zeroed = _reference()
    assert report.params == zeroed
    run_ranks(_worker, (free_port(), report.plan.to_json()), WORLD, TIMEOUT_S)
