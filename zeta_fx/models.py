"""Small built-in models for the demo, the examples and the benchmarks.

They follow the real architectures' structure (torchvision's Bottleneck with a projection
shortcut, SENet's gate, nanoGPT's pre-LN block) at a size that runs in milliseconds.

>>> import torch
>>> SEResNet()(torch.randn(1, 3, 32, 32)).shape
torch.Size([1, 10])
>>> GPT(n_layer=2)(torch.randint(0, 64, (1, 8))).shape
torch.Size([1, 8, 64])
>>> DiT()(torch.randn(2, 4, 8, 8), torch.rand(2) * 1000, torch.tensor([1, 3])).shape
torch.Size([2, 4, 8, 8])
>>> UNet()(torch.randn(2, 3, 16, 16), torch.rand(2) * 1000).shape
torch.Size([2, 3, 16, 16])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SqueezeExcite", "SEBottleneck", "SEResNet", "CausalSelfAttention", "MLP",
           "GPTBlock", "GPT", "timestep_embedding", "modulate", "DiTBlock", "DiTFinalLayer",
           "DiT", "ResBlock", "AttentionBlock", "UNet"]


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


# -- diffusion models ---------------------------------------------------------------------

def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in guided-diffusion."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """DiT's adaptive layer-norm modulation of tokens ``x`` (N, T, D) by (N, D) vectors."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """DiT block with adaLN-Zero conditioning (Peebles & Xie 2023, facebookresearch/DiT).

    ``x + gate * attn(modulate(norm(x), shift, scale))``, then the same with the MLP; the
    six shift/scale/gate vectors come from one linear on the conditioning ``c``.
    """

    def __init__(self, dim: int, n_head: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.n_head = n_head
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            self.adaLN_modulation(c).chunk(6, dim=1))
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class DiTFinalLayer(nn.Module):
    """Modulated norm, then the linear to patch pixels."""

    def __init__(self, dim: int, patch: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """A small class-conditional DiT: patch embedding, timestep and label embedders, blocks.

    Initialised randomly (DiT's own init would zero the adaLN layers and final linear, which
    is what ``rule="adaln_zero"`` derives from the graph).
    """

    def __init__(self, input_size: int = 8, patch: int = 2, in_channels: int = 4,
                 dim: int = 32, depth: int = 2, n_head: int = 4, num_classes: int = 10,
                 freq_dim: int = 32) -> None:
        super().__init__()
        self.patch, self.in_channels, self.freq_dim = patch, in_channels, freq_dim
        self.grid = input_size // patch
        self.x_embedder = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.t_embedder = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_embedder = nn.Embedding(num_classes, dim)
        tokens = (input_size // patch) ** 2
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02, requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(dim, n_head) for _ in range(depth))
        self.final_layer = DiTFinalLayer(dim, patch, in_channels)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p, c = self.patch, self.in_channels
        h = w = self.grid  # fixed by input_size, so the model traces symbolically
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.t_embedder(timestep_embedding(t, self.freq_dim)) + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))


class ResBlock(nn.Module):
    """guided-diffusion ResBlock: the timestep embedding is added inside the branch."""

    def __init__(self, in_ch: int, emb_dim: int, out_ch: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        out_ch = out_ch or in_ch
        self.in_layers = nn.Sequential(nn.GroupNorm(8, in_ch), nn.SiLU(),
                                       nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))
        self.out_layers = nn.Sequential(nn.GroupNorm(8, out_ch), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip_connection = nn.Identity() if out_ch == in_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Spatial self-attention with a 1x1 ``proj_out``, added back to its input."""

    def __init__(self, ch: int, n_head: int = 2) -> None:
        super().__init__()
        self.n_head = n_head
        self.norm = nn.GroupNorm(8, ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        x = x.reshape(b, c, hgt * wid)
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.n_head, c // self.n_head, hgt * wid)
        q, k, v = qkv.transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, hgt * wid)
        return (x + self.proj_out(h)).reshape(b, c, hgt, wid)


class UNet(nn.Module):
    """A small guided-diffusion-style UNet: ResBlocks with timestep embedding, attention at
    the lowest resolution, ``cat`` skips from encoder to decoder, GroupNorm-SiLU-conv out."""

    def __init__(self, in_channels: int = 3, ch: int = 16, mult: tuple[int, ...] = (1, 2),
                 emb_dim: int = 32) -> None:
        super().__init__()
        self.ch = ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        self.input_conv = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        chans, cur = [ch], ch
        for level, m in enumerate(mult):
            self.down.append(ResBlock(cur, emb_dim, ch * m))
            cur = ch * m
            chans.append(cur)
            if level < len(mult) - 1:
                self.downsample.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
        self.mid_res1 = ResBlock(cur, emb_dim)
        self.mid_attn = AttentionBlock(cur)
        self.mid_res2 = ResBlock(cur, emb_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            skip = chans.pop()
            self.up.append(ResBlock(cur + skip, emb_dim, ch * m))
            cur = ch * m
            if level > 0:
                self.upsample.append(nn.Conv2d(cur, cur, 3, padding=1))
        self.out = nn.Sequential(nn.GroupNorm(8, cur), nn.SiLU(),
                                 nn.Conv2d(cur, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.ch))
        h = self.input_conv(x)
        hs = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            hs.append(h)  # kept for the decoder's cat, and still the next block's input
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb)), emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)
