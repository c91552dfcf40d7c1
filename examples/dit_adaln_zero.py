"""adaLN-Zero on a DiT, derived from the graph: no per-block init code.

DiT (Peebles & Xie 2023) zeroes each block's adaLN modulation linear, the final layer's
modulation and the final linear, so that every block starts as the identity and the model
predicts zero. `rule="adaln_zero"` finds exactly those layers from what they do in the graph:
conditioning layers (from the timestep and label) whose outputs are chunked into
shift/scale/gate of the data path, plus the last layer before the output.

    python examples/dit_adaln_zero.py
"""
import torch

from zeta_fx import zero_init_pass
from zeta_fx.models import DiT

torch.manual_seed(0)
model = DiT(input_size=8, patch=2, in_channels=4, dim=32, depth=4, n_head=4)

report = zero_init_pass(model, rule="adaln_zero")
print(report)

# What DiT's own initialize_weights() zeroes, by name, for comparison.
expected = [f"blocks.{i}.adaLN_modulation.1" for i in range(4)] + [
    "final_layer.adaLN_modulation.1", "final_layer.linear"]
assert report.modules == expected, report.modules

# Each block is now the identity, and the model predicts exactly zero.
x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2) * 1000, torch.tensor([3, 7])
tokens, c = torch.randn(2, 16, 32), torch.randn(2, 32)
assert all(torch.equal(block(tokens, c), tokens) for block in model.blocks)
assert not model(x, t, y).any()
print("\nevery DiT block is the identity and the model outputs zero")
