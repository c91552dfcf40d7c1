"""Small built-in models for the demo, the examples and the benchmarks.

They follow the real architectures' structure (torchvision's Bottleneck with a projection
shortcut, SENet's gate, nanoGPT's pre-LN block) at a size that runs in milliseconds.

>>> import torch
>>> SEResNet()(torch.randn(1, 3, 32, 32)).shape
torch.Size([1, 10])
>>> GPT(n_layer=2)(torch.randint(0, 64, (1, 8))).shape
torch.Size([1, 8, 64])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SqueezeExcite", "SEBottleneck", "SEResNet", "CausalSelfAttention", "MLP",
           "GPTBlock", "GPT"]


class SqueezeExcite(nn.Module):
    """Channel gate: ``x * sigmoid(fc2(relu(fc1(pool(x)))))``."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * torch.sigmoid(gate)


class SEBottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck with squeeze-excite and an optional projection skip."""

    def __init__(self, in_ch: int, mid: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)
        self.se = SqueezeExcite(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.se(self.bn3(self.conv3(out)))
        return self.relu(out + identity)


class SEResNet(nn.Module):
    """A small SE-ResNet: stem, stages of :class:`SEBottleneck`, pooled linear head."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), depth: int = 2,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks, in_ch = [], widths[0]
        for i, width in enumerate(widths):
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(SEBottleneck(in_ch, width // 2, width, stride))
                in_ch = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class CausalSelfAttention(nn.Module):
    """nanoGPT-style attention: fused qkv, split, SDPA, output projection, dropout."""

    def __init__(self, dim: int, n_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class GPTBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, dim: int, n_head: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(dim), CausalSelfAttention(dim, n_head, dropout)
        self.ln_2, self.mlp = nn.LayerNorm(dim), MLP(dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A GPT-style decoder: token and learned position embeddings, pre-LN blocks, head.

    Positions come from ``torch.arange`` of the input's length: shape-derived, not data.
    ``tie_weights=True`` shares the head's weight with the token embedding, as nanoGPT does.
    """

    def __init__(self, vocab_size: int = 64, block_size: int = 32, n_layer: int = 4,
                 n_head: int = 4, dim: int = 32, dropout: float = 0.0,
                 tie_weights: bool = False) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, dim)
        self.wpe = nn.Embedding(block_size, dim)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(GPTBlock(dim, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        if tie_weights:
            self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # nanoGPT's scaled init
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(0, idx.size(1), dtype=torch.long, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))
