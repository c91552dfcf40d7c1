"""A guided-diffusion-style UNet: zero the final conv and the last layer of every residual
branch with one composed rule.

guided-diffusion wraps these layers in `zero_module(...)` by hand. Here the graph says which
they are: each ResBlock's last conv (the timestep-embedding add inside the branch is not a
residual join; 1x1-conv skips are never zeroed), the attention block's `proj_out`, and the
conv before the output. The decoder's `cat` skips are never joins.

    python examples/unet_output_and_residual.py
"""
import torch

from zeta_fx import zero_init_pass
from zeta_fx.models import UNet
from zeta_fx.rules import OutputLayer, ResidualBranchLast

torch.manual_seed(0)
model = UNet(in_channels=3, ch=16, mult=(1, 2), emb_dim=32).eval()

report = zero_init_pass(model, rule=OutputLayer() | ResidualBranchLast())
print(report)

assert report.modules == ["out.2", "down.0.out_layers.3", "down.1.out_layers.3",
                          "mid_res1.out_layers.3", "mid_attn.proj_out", "mid_res2.out_layers.3",
                          "up.0.out_layers.3", "up.1.out_layers.3"], report.modules

# The model predicts zero; every ResBlock returns its skip path, attention its input.
x, t = torch.randn(2, 3, 16, 16), torch.rand(2) * 1000
assert not model(x, t).any()
h, emb = torch.randn(2, 16, 16, 16), torch.randn(2, 32)
assert torch.equal(model.down[0](h, emb), h)
print("\nthe UNet outputs zero and each residual block starts as its skip path")
