"""torchvision ResNet-50: zero the last BatchNorm of every residual branch, from the graph.

torchvision does this by hand with ``resnet50(zero_init_residual=True)``, per block class
(``Bottleneck.bn3``, ``BasicBlock.bn2``). zeta_fx derives the same layers from the traced
graph, then this script checks that both agree, parameter by parameter.

    python examples/torchvision_resnet.py            # prints the report, checks, exits 0
"""
import sys

import torch
import torchvision

from zeta_fx import zero_init_pass


def zero_params(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if not p.detach().any()}


torch.manual_seed(0)
model = torchvision.models.resnet50()              # random init, no weights downloaded
report = zero_init_pass(model, rule="residual_branch_last")
print(report)

reference = torchvision.models.resnet50(zero_init_residual=True)
ours, theirs = zero_params(model), zero_params(reference)
hand_zeroed = {name.rsplit(".", 1)[0] for name in theirs if name.endswith("bn3.weight")}
if ours != theirs or set(report.modules) != hand_zeroed:
    print(f"MISMATCH with zero_init_residual=True: only zeta_fx {sorted(ours - theirs)}, "
          f"only torchvision {sorted(theirs - ours)}", file=sys.stderr)
    sys.exit(1)

# Each block now starts as the identity (then ReLU): the branch adds exactly zero.
block = model.layer2[1].eval()
x = torch.relu(torch.randn(2, 512, 8, 8))
assert torch.equal(block(x), torch.relu(x))
print(f"\nmatches torchvision's zero_init_residual=True: the same {len(hand_zeroed)} "
      f"BatchNorms ({', '.join(sorted(hand_zeroed)[:2])}, ...), and every other parameter "
      "is zero in both or in neither")
