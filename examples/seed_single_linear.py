"""Seed example 1 (the seed document, shared/seed/init_zero_.md): initialise a single linear layer to zero."""
import torch
from torch import nn

from zeta_fx.utils import exists, init_zero_

# Create a single linear layer
layer = nn.Linear(10, 5)

# Initialize weights and bias to zero
init_zero_(layer)

print("Weights:", layer.weight)
print("Bias:", layer.bias)
