"""residual_branch_last on each architecture family: exact sets, untouched bits, zero branches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from claims import OutputRecorder, check_pass, params_of
from zeta_fx.models import DiT, UNet


# -- post-LN BERT ----------------------------------------------------------------------------
class BertLayer(nn.Module):
    """BERT-style post-LN: ``LayerNorm(x + dropout(dense(h)))`` twice."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.attn_dense, self.attn_norm = nn.Linear(dim, dim), nn.LayerNorm(dim)
        self.intermediate, self.output = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.out_norm, self.dropout = nn.LayerNorm(dim), nn.Dropout(0.1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, C = h.shape
        q, k, v = (p(h).view(B, T, self.heads, C // self.heads).transpose(1, 2)
                   for p in (self.query, self.key, self.value))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C)
        h = self.attn_norm(h + self.dropout(self.attn_dense(a)))
        return self.out_norm(h + self.dropout(self.output(F.gelu(self.intermediate(h)))))


class Bert(nn.Module):
    def __init__(self, n_layer: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.layers = nn.ModuleList(BertLayer() for _ in range(n_layer))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        for layer in self.layers:
            h = layer(h)
        return h


def test_bert_post_ln_zeroes_dense_outputs_before_the_norm():
    torch.manual_seed(0)
    model = Bert().eval()
    expected = params_of("layers.0.attn_dense", "layers.0.output",
                         "layers.1.attn_dense", "layers.1.output")
    check_pass(model, params=expected)
    rec = OutputRecorder(model, ["layers.0.attn_dense", "layers.1.output"])
    model(torch.randint(0, 50, (2, 5)))
    rec.assert_all_zero()
    h = torch.randn(2, 5, 16)
    layer = model.layers[0]
    assert torch.equal(layer(h), layer.out_norm(layer.attn_norm(h)))


# -- nn.MultiheadAttention in a block ---------------------------------------------------------
class MHABlock(nn.Module):
    def __init__(self, dim: int = 16, bias: bool = True, unpack: bool = False) -> None:
        super().__init__()
        self.unpack = unpack
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True, bias=bias)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        if self.unpack:  # torchvision's ViT: the unused weights output must not block the join
            a, _ = self.attn(h, h, h, need_weights=False)
        else:
            a = self.attn(h, h, h, need_weights=False)[0]
        x = x + a
        return x + self.mlp(self.ln2(x))


@pytest.mark.parametrize("bias, unpack", [(True, False), (False, False), (True, True)])
def test_multihead_attention_zeroes_out_proj_never_in_proj(bias, unpack):
    torch.manual_seed(0)
    block = MHABlock(bias=bias, unpack=unpack).eval()
    expected = {"attn.out_proj.weight", "mlp.2.weight", "mlp.2.bias"}
    if bias:
        expected.add("attn.out_proj.bias")
    report = check_pass(block, params=expected)
    assert report.modules == ["attn.out_proj", "mlp.2"]
    assert block.attn.in_proj_weight.abs().sum() > 0
    x = torch.randn(2, 5, 16)
    assert torch.equal(block(x), x)


def test_torchvision_vit_attention_and_mlp():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                                 num_heads=2, hidden_dim=32, mlp_dim=64).eval()
    layers = [f"encoder.layers.encoder_layer_{i}" for i in range(2)]
    report = check_pass(model, params=params_of(*(f"{l}.{m}" for l in layers
                                                  for m in ("self_attention.out_proj", "mlp.3"))))
    assert report.skipped == []
    x = torch.randn(2, 17, 32)
    assert torch.equal(model.encoder.layers[0](x), x)


# -- nn.TransformerEncoder / Decoder (opaque to symbolic tracing) ------------------------------
class Seq2Seq(nn.Module):
    def __init__(self, norm_first: bool, dim: int = 16) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.1, batch_first=True,
                                       norm_first=norm_first), 2, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(dim, 2, 32, dropout=0.1, batch_first=True,
                                       norm_first=norm_first), 1)
        self.head = nn.Linear(dim, 5)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(tgt, self.encoder(src)))


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_encoder_decoder_layers_as_composite_leaves(norm_first):
    torch.manual_seed(0)
    model = Seq2Seq(norm_first).eval()
    gm = fx.symbolic_trace(model)
    assert {n.target for n in gm.graph.nodes if n.op == "call_module"} == {
        "encoder", "decoder", "head"}  # opaque to tracing
    expected = params_of("encoder.layers.0.self_attn.out_proj", "encoder.layers.0.linear2",
                         "encoder.layers.1.self_attn.out_proj", "encoder.layers.1.linear2",
                         "decoder.layers.0.self_attn.out_proj",
                         "decoder.layers.0.multihead_attn.out_proj", "decoder.layers.0.linear2")
    report = check_pass(model, params=expected)
    composite = {row["module"] for row in report.touched if row["site"]["kind"] == "composite"}
    assert composite == {m[:-len(".weight")] for m in expected if m.endswith(".weight")}
    rec = OutputRecorder(model, ["encoder.layers.0.self_attn", "encoder.layers.1.linear2",
                                 "decoder.layers.0.multihead_attn", "decoder.layers.0.linear2"])
    model(torch.randn(2, 6, 16), torch.randn(2, 4, 16))
    rec.assert_all_zero()
    x = torch.randn(2, 6, 16)
    layer = model.encoder.layers[0]
    want = x if norm_first else layer.norm2(layer.norm1(x))
    assert torch.equal(layer(x), want)


def test_nn_transformer_encoder_and_decoder():
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.t = nn.Transformer(16, 2, 1, 1, 32, batch_first=True)

        def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
            return self.t(src, tgt)

    check_pass(Wrapped(), params=params_of(
        "t.encoder.layers.0.self_attn.out_proj", "t.encoder.layers.0.linear2",
        "t.decoder.layers.0.self_attn.out_proj", "t.decoder.layers.0.multihead_attn.out_proj",
        "t.decoder.layers.0.linear2"))


def test_transformer_encoder_layer_without_bias():
    model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, bias=False))
    check_pass(model, params={"0.self_attn.out_proj.weight", "0.linear2.weight"})


# -- guided-diffusion UNet --------------------------------------------------------------------
UNET_BRANCH_ENDS = ["down.0.out_layers.3", "down.1.out_layers.3", "mid_res1.out_layers.3",
                    "mid_attn.proj_out", "mid_res2.out_layers.3", "up.0.out_layers.3",
                    "up.1.out_layers.3"]


def test_unet_resblocks_attention_and_cat_skips():
    torch.manual_seed(0)
    model = UNet().eval()
    report = check_pass(model, params=params_of(*UNET_BRANCH_ENDS))
    # the timestep-embedding add inside each ResBlock is reported as a side input
    emb_adds = [s for s in report.skipped if "side input" in s.reason]
    assert len(emb_adds) == 6 and all("`t` only" in s.reason for s in emb_adds)
    assert not any(row["module"].endswith("skip_connection") for row in report.touched)
    sites = {row["module"]: row["site"] for row in report.touched}
    assert sites["down.1.out_layers.3"]["skip_kind"] == "projection"
    assert sites["down.1.out_layers.3"]["skip_modules"] == ["down.1.skip_connection"]
    assert sites["mid_res1.out_layers.3"]["skip_kind"] == "identity"
    assert sites["mid_res1.out_layers.3"]["skip_modules"] == []
    # forward: every ResBlock returns its skip, the attention block its input
    x, emb = torch.randn(2, 16, 8, 8), torch.randn(2, 32)
    assert torch.equal(model.down[0](x, emb), x)
    y = torch.randn(2, 64, 4, 4)
    assert torch.equal(model.up[0](y, emb), model.up[0].skip_connection(y))
    z = torch.randn(2, 32, 4, 4)
    assert torch.equal(model.mid_attn(z), z)


# -- DiT ----------------------------------------------------------------------------------------
def test_dit_residual_rule_zeroes_data_path_outputs_not_modulation():
    torch.manual_seed(0)
    model = DiT(depth=2).eval()
    expected = params_of("blocks.0.proj", "blocks.0.mlp.2", "blocks.1.proj", "blocks.1.mlp.2")
    check_pass(model, params=expected)
    x, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    for block in model.blocks:
        assert torch.equal(block(x, c), x)


def test_torchvision_swin_wrapped_window_attention():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 1],
                                               num_heads=[2, 2], window_size=[2, 2]).eval()
    blocks = ["features.1.0", "features.1.1", "features.3.0"]
    report = check_pass(model, params=params_of(*(f"{b}.{m}" for b in blocks
                                                  for m in ("attn.proj", "mlp.3"))))
    assert report.skipped == []
    x = torch.randn(1, 4, 4, 16)
    for block in model.features[1]:  # the shifted block too
        assert torch.equal(block(x), x)
