"""int4 experts (mot_engine/model/int4.py) on the CPU: the kernels compute the dequantized weights' product, the
quantization error stays within half a step, and decoding through every path gives the same tokens with them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mot_engine import GenerationRequest, Generator, build_mot
from mot_engine.model.config import ExpertConfig
from mot_engine.kernels.substitutions.int4 import install_int4_kernels
from mot_engine.model.int4 import (Int4Linear, pack_split_halves, quantizable, quantize_groups, quantize_int4,
                                   split_halves_glu_reference, split_halves_reference, unpack_split_halves)

SOURCE = "void scale(float* x, float a, int n) { for (int i = 0; i < n; ++i) x[i] = a * x[i]; }"


@pytest.mark.parametrize("in_features,out_features,bias", [(256, 64, True), (96, 32, False), (64, 48, True)])
def test_int4_linear_is_the_product_with_its_dequantized_weight(in_features, out_features, bias):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=bias)
    layer = Int4Linear(linear, torch.float32)
    assert layer.group == next(g for g in (128, 64, 32) if in_features % g == 0)
    codes, _ = quantize_groups(linear.weight.detach(), layer.group)
    weight = layer.dequantized_weight(codes)
    x = torch.randn(2, 3, in_features)  # any leading shape
    expected = x @ weight.t() + (linear.bias if bias else 0)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    # each weight is within half a quantization step of its group's grid
    step = (linear.weight.detach().view(out_features, -1, layer.group).amax(-1)
            - linear.weight.detach().view(out_features, -1, layer.group).amin(-1)) / 15
    error = (weight - linear.weight.detach()).abs().view(out_features, -1, layer.group)
    assert torch.all(error <= step[..., None] / 2 + 1e-6)


@pytest.mark.parametrize("in_features,out_features,bias", [(256, 64, True), (128, 48, False)])
def test_split_layout_is_the_product_with_its_dequantized_weight(in_features, out_features, bias):
    """The GPU's layout (codes across the halves of K, offsets folding the zero point) holds the same quantization:
    packing round-trips the codes, and the layer computes x W^T + b with the same dequantized weight up to the
    rounding of the folded offset."""
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=bias)
    split = Int4Linear(linear, torch.float32, layout="split")
    tinygemm = Int4Linear(linear, torch.float32)  # the CPU's default layout
    assert (split.layout, tinygemm.layout, split.kernel) == ("split", "tinygemm", None)
    codes, sz = quantize_groups(linear.weight.detach(), split.group)
    assert torch.equal(unpack_split_halves(pack_split_halves(codes)), codes)
    assert torch.equal(unpack_split_halves(split.packed), codes)
    weight = split.dequantized_weight(codes)
    scale, zero = sz[..., 0].t(), sz[..., 1].t()  # (N, G): w = (q - 8) * scale + zero, the tinygemm form
    q = codes.float().view(out_features, -1, split.group)
    torch.testing.assert_close(weight, ((q - 8) * scale[..., None] + zero[..., None]).view_as(weight),
                               rtol=1e-5, atol=1e-5)
    if tinygemm.group == split.group:
        torch.testing.assert_close(weight, tinygemm.dequantized_weight(codes), rtol=1e-5, atol=1e-5)
    x = torch.randn(3, in_features)
    expected = x @ weight.t() + (linear.bias if bias else 0)
    torch.testing.assert_close(split(x), expected, rtol=1e-5, atol=1e-5)
    calls = []
    split.kernel = lambda *a: calls.append(a) or split_halves_reference(*a)  # what install_int4_kernels sets
    split(x)
    assert len(calls) == 1 and calls[0][4] == split.group
    with pytest.raises(ValueError, match="split needs"):
        Int4Linear(nn.Linear(96, 32), layout="split")  # K/2 = 48: no whole groups of 32


def test_shapes_the_kernels_cannot_take_are_refused_or_left_alone():
    assert not quantizable(nn.Linear(48, 48)) and not quantizable(nn.Linear(64, 40))
    with pytest.raises(ValueError, match="48->48"):
        Int4Linear(nn.Linear(48, 48))
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 40))
    assert quantize_int4(model, torch.float32) == 1
    assert isinstance(model[0], Int4Linear) and type(model[2]) is nn.Linear


def test_int4_is_a_known_quantization_and_others_are_refused():
    assert ExpertConfig("e", path="x", quantization="int4").quantization == "int4"
    with pytest.raises(ValueError, match="quantization must be one of"):
        ExpertConfig("e", path="x", quantization="int3")


@pytest.fixture(scope="module")
def int4_mot():
    return build_mot("tiny", device="cpu", quantization="int4")


@torch.no_grad()
def test_int4_experts_decode_the_same_tokens_on_every_path(int4_mot):
    """The slab path (on a GPU: CUDA graphs) equals the dynamic-cache path and the teacher-forced forward, in both
    modes; and int4 really changed the experts."""
    mot = int4_mot.eval()
    assert sum(isinstance(m, Int4Linear) for m in mot.experts[0].modules()) > 0
    reqs = [GenerationRequest(SOURCE, mode=mode, max_new_tokens=10, stop_at_eos=False, force_active=[p, (p + 1) % 3])
            for p in range(3) for mode in ("fast", "full")]
    dynamic = Generator(mot, static_cache=False).generate(reqs)
    slabs = Generator(mot, static_cache=True, cuda_graphs=False).generate(reqs)
    for req, a, b in zip(reqs, dynamic, slabs):
        assert a.token_ids == b.token_ids
        logits = mot.target_logits(SOURCE, a.token_ids, active_experts=req.force_active)
        assert logits.argmax(-1).tolist() == a.token_ids
    # The whole expert is the unquantized one with each replaced layer's weight dequantized (same random weights).
    plain = build_mot("tiny", device="cpu")
    quantized_layers = dict(mot.experts[0].named_modules())
    replaced = 0
    for name, module in plain.experts[0].named_modules():
        layer = quantized_layers[name]
        if isinstance(layer, Int4Linear):
            codes, _ = quantize_groups(module.weight, layer.group)
            module.weight.copy_(layer.dequantized_weight(codes))
            replaced += 1
    ids = torch.tensor([mot.prompt_ids(0, SOURCE)])
    quantized, reference = mot.experts[0](input_ids=ids).logits, plain.experts[0](input_ids=ids).logits
    assert replaced > 0
    torch.testing.assert_close(quantized, reference, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_int4_fusions_compute_what_the_layers_computed():
    """q/k/v stacked into one product and gate/up/SiLU into one kernel (the plain-torch references standing in for the
    Triton kernels on the CPU): the expert's logits are those of its unfused split-layout layers, its buffers take no
    more memory, and the fused forwards are what runs: one product per attention, one GLU per MLP."""
    mot = build_mot("tiny", device="cpu")
    expert = mot.experts[0]  # Qwen2: q/k/v with biases, a SiLU-gated MLP; widths the split layout takes
    assert quantize_int4(expert, torch.float32, layout="split") > 0
    ids = torch.tensor([mot.prompt_ids(0, SOURCE)])
    unfused = expert(input_ids=ids).logits

    def storage_bytes():
        return sum({b.untyped_storage().data_ptr(): b.untyped_storage().nbytes() for b in expert.buffers()}.values())

    memory = storage_bytes()
    calls = []
    install_int4_kernels(mot, product=lambda *a: calls.append(a[1].shape[0]) or split_halves_reference(*a),
                         glu=lambda *a: calls.append("glu") or split_halves_glu_reference(*a))
    layers = expert.config.num_hidden_layers
    assert mot._int4_fused == (layers, layers)
    calls.clear()
    fused = expert(input_ids=ids).logits
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)
    attention = expert.model.layers[0].self_attn
    qkv_rows = sum(getattr(attention, n).out_features for n in ("q_proj", "k_proj", "v_proj"))
    hidden = expert.config.hidden_size
    assert calls == [qkv_rows, hidden, "glu", hidden] * layers  # q/k/v, o_proj, gate/up/SiLU, down_proj
    assert storage_bytes() <= memory
    # A layer called alone still computes its own product (its buffers are views of its rows)
    x = torch.randn(2, hidden)
    k_proj = attention.k_proj
    torch.testing.assert_close(k_proj(x), split_halves_reference(x, k_proj.packed, k_proj.scales, k_proj.offsets,
                                                                 k_proj.group, k_proj.bias))
    assert k_proj.packed.shape == (k_proj.out_features, hidden // 2)
    assert install_int4_kernels(mot) == install_int4_kernels(mot, qkv=False)  # idempotent: the first call decides


@torch.no_grad()
def test_a_gated_mlp_whose_activation_is_not_silu_keeps_its_forward():
    """Gemma's MLPs are gated by GELU: the probe refuses the SiLU kernel and the module computes what it did."""
    from transformers.activations import ACT2FN

    from mot_engine.kernels.substitutions.int4 import _fuse_gated_mlp

    class GatedMLP(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.gate_proj, self.up_proj = (Int4Linear(nn.Linear(64, 128, bias=False), torch.float32, "split")
                                            for _ in range(2))
            self.down_proj = Int4Linear(nn.Linear(128, 64, bias=False), torch.float32, "split")
            self.act_fn = ACT2FN[act]

        def forward(self, x):
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    torch.manual_seed(0)
    x = torch.randn(2, 3, 64)
    for act, fused in (("gelu_pytorch_tanh", False), ("silu", True)):
        mlp = GatedMLP(act)
        before = mlp(x)
        assert _fuse_gated_mlp(mlp, split_halves_glu_reference) is fused
        assert ("forward" in vars(mlp)) is fused  # an instance forward only where the probe passed
        torch.testing.assert_close(mlp(x), before, rtol=1e-5, atol=1e-5)


def test_each_decoded_product_takes_the_blocks_of_its_kind():
    from mot_engine.kernels import int4_gemv

    # the seed primary's products: merged q/k/v and o, the gated MLP's gate and up in one launch, down
    assert int4_gemv.product_kind(1536, glu=False) == "linear"
    assert int4_gemv.product_kind(1536, glu=True) == "glu"
    assert int4_gemv.product_kind(8960, glu=False) == "long_k"
    assert int4_gemv.product_kind(8960, glu=True) == "glu"
    for blocks in (int4_gemv.ONE_ROW_BLOCKS, int4_gemv.ROWS_BLOCKS):
        assert set(blocks) == set(int4_gemv.PRODUCT_KINDS)


def test_a_k_split_leaves_no_program_without_work():
    from mot_engine.kernels.int4_gemv import even_split

    assert even_split(9, 4) == 3  # 9 one-row steps: 3 programs of 3, not 4 of which one holds none
    assert even_split(6, 5) == 3
    assert even_split(35, 8) == 7  # the down product's 35 groups a half: 7 of 5
    assert even_split(1, 4) == 1
    assert even_split(12, 4) == 4


def test_the_rows_kernel_splits_k_only_where_tiles_leave_sms_idle(monkeypatch):
    from mot_engine.kernels import int4_gemv

    monkeypatch.setattr(int4_gemv, "_sm_count", lambda index: 132)  # an H100
    cuda = torch.device("cuda", 0)
    assert int4_gemv.rows_split_k(48, 35, cuda) == 6  # 1536x8960 at 16 rows: 48 tiles, 35 groups a half
    assert int4_gemv.rows_split_k(64, 6, cuda) == 3  # 5 wanted, but 6 groups in 5 splits would leave one idle
    assert int4_gemv.rows_split_k(280, 6, cuda) == 1  # 8960 outputs: tiles enough
    assert int4_gemv.rows_split_k(8, 1, cuda) == 1  # one group: nothing to split
    assert int4_gemv.rows_split_k(48, 35, torch.device("cpu")) == 1
    monkeypatch.setattr(int4_gemv, "ROWS_SPLIT_K", 4)
    assert int4_gemv.rows_split_k(280, 6, cuda) == 4


def test_the_daemon_and_the_batch_cli_load_int4_experts():
    from daemon.cli import build_parser
    from daemon.engine_config import EngineConfig
    from daemon.served_model import ServedModel

    parser = build_parser()
    assert parser.parse_args(["serve", "--quantization", "int4"]).quantization == "int4"
    assert parser.parse_args(["translate", "x.cpp", "--out", "o", "--quantization", "int4"]).quantization == "int4"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--quantization", "int3"])
    served = ServedModel.load(EngineConfig(preset="tiny", device="cpu", quantization="int4"))
    assert any(isinstance(m, Int4Linear) for m in served.mot.experts[0].modules())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the graph path)")
@torch.no_grad()
def test_int4_graph_path_equals_eager_path_on_gpu():
    """On a GPU: int4 experts in bf16 decode the same greedy tokens through slabs and CUDA graphs (with the Triton
    substitutions) as through the eager dynamic-cache path, in both modes."""
    mot = build_mot("tiny", device="cuda", dtype="bfloat16", quantization="int4").eval()
    assert sum(isinstance(m, Int4Linear) for m in mot.experts[0].modules()) > 0
    reqs = [GenerationRequest(SOURCE, mode=mode, max_new_tokens=12, stop_at_eos=False, force_active=[p, (p + 1) % 3])
            for p in range(3) for mode in ("fast", "full")]
    graphs = Generator(mot).generate(reqs)
    eager = Generator(mot, static_cache=False, cuda_graphs=False).generate(reqs)
    assert Generator(mot).cuda_graphs
    for a, b in zip(graphs, eager):
        assert a.token_ids == b.token_ids


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the Triton int4 kernels)")
@torch.no_grad()
def test_int4_kernels_equal_the_dequantized_product_on_gpu():
    """The Triton int4 kernels at the seed experts' shapes, bf16, one row (decode) to prefill-sized blocks of rows,
    against the dequantized weight's product in float32; and a Generator puts them in place."""
    from mot_engine.kernels.int4_gemv import int4_glu, int4_linear

    torch.manual_seed(0)
    for n, k in [(1536, 1536), (8960, 1536), (1536, 8960), (2048, 5504), (3072, 12288)]:
        layer = Int4Linear(nn.Linear(k, n, bias=n == 1536, device="cuda"), torch.bfloat16)
        assert layer.layout == "split"
        for m in (1, 2, 16, 100):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            got = int4_linear(x, layer.packed, layer.scales, layer.offsets, layer.group, layer.bias).float()
            want = split_halves_reference(x.float(), layer.packed, layer.scales.float(), layer.offsets.float(),
                                          layer.group, None if layer.bias is None else layer.bias.float())
            scale = want.abs().max()
            assert (got - want).abs().max() <= 2e-2 * scale, (n, k, m)
    for n, k in [(8960, 1536), (5504, 2048)]:  # gated MLPs' gate and up stacked: silu(gate) * up in one kernel
        layer = Int4Linear(nn.Linear(k, 2 * n, bias=False, device="cuda"), torch.bfloat16)
        for m in (1, 3, 16, 100):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            got = int4_glu(x, layer.packed, layer.scales, layer.offsets, layer.group).float()
            want = split_halves_glu_reference(x.float(), layer.packed, layer.scales, layer.offsets, layer.group).float()
            assert (got - want).abs().max() <= 2e-2 * want.abs().max(), (n, k, m)
    mot = build_mot("tiny", device="cuda", dtype="bfloat16", quantization="int4")
    layers = [m for m in mot.experts[0].modules() if isinstance(m, Int4Linear)]
    assert layers and all(m.kernel is None for m in layers)
    assert Generator(mot).int4_kernels and all(m.kernel is int4_linear for m in layers if m.layout == "split")
    assert mot._int4_fused[0] > 0 and mot._int4_fused[1] > 0  # the tiny Qwen2 expert's attentions and MLPs
