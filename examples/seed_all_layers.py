"""Seed example 2 (the seed document, shared/seed/init_zero_.md): initialise all layers of a model to zero."""
import torch
from torch import nn

from zeta_fx.utils import exists, init_zero_

# Create a simple neural network
model = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1))

# Loop through each layer in the model
for layer in model:
    # Check if the layer has a weight, i.e., is a nn.Linear() layer
    if exists(layer, "weight"):
        init_zero_(layer)

# Check weights of first layer
print("Weights of First Layer:", model[0].weight)
print("Bias of First Layer:", model[0].bias)

# Check weights of third layer
print("Weights of Third Layer:", model[2].weight)
print("Bias of Third Layer:", model[2].bias)
