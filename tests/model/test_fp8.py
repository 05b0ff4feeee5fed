"""FP8 block weights: FP8Linear against the bf16 matmul, what quantize_fp8 converts, moving the model.

Error bound used below: e4m3 keeps 3 mantissa bits, so each operand (weight and activation, both scaled
per row into e4m3's range) is rounded to within 2^-4 of itself, the product to within about 2^-3. Over a
K-term dot product the roundings are independent, so the error of the output, relative to its norm, is
their RMS: at most sqrt(2) * 2^-4 / sqrt(3) ≈ 0.051 for errors uniform in ±2^-4 (about 0.035 measured on
Gaussian inputs, 0.041 the worst of 80 seeds and shapes). The tests allow 0.06.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nar.model import NARConfig, NARModel
from nar.model.fp8 import FP8, FP8Linear, quantize_fp8
from nar.sampling import SamplingConfig, generate

REL_ERROR = 0.06
BLOCK_LINEARS = ("attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def tiny(dtype: torch.dtype = torch.bfloat16, **overrides) -> NARModel:
    """NAR-tiny (dims multiples of 16) with every weight non-zero (the heads start at zero)."""
    model = NARModel(NARConfig.from_name("NAR-tiny", **overrides)).eval()
    torch.manual_seed(1)
    for p in model.parameters():
        nn.init.normal_(p, std=0.2)
    return model.to(dtype)


def block_linear_names(model: NARModel) -> set[str]:
    names = {m: n for n, m in model.named_modules()}
    return {f"{names[block]}.{sub}" for block in model.blocks() for sub in BLOCK_LINEARS}


def test_fp8_linear_is_close_to_the_bf16_linear():
    linear = nn.Linear(64, 48, bias=False).to(torch.bfloat16)
    x = torch.randn(2, 3, 64).to(torch.bfloat16)
    x[0, 1] = 0  # an all-zero row: scale guarded, output zero, no NaN
    fp8 = FP8Linear.from_linear(linear)
    out = fp8(x)
    ref = x.float() @ linear.weight.float().t()  # the exact product of the bf16 operands
    assert out.shape == (2, 3, 48) and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all() and (out[0, 1] == 0).all()
    assert relative_error(out, ref) < REL_ERROR
    assert relative_error(fp8(x[1]), ref[1]) < REL_ERROR  # 2-D input
    assert fp8.weight.dtype == FP8 and fp8.weight_scale.dtype == torch.float32
    assert list(fp8.parameters()) == []  # inference only: buffers
    assert "float8_e4m3fn" in repr(fp8)


def test_fp8_linear_refuses_a_bias():
    with pytest.raises(ValueError, match="bias-free"):
        FP8Linear.from_linear(nn.Linear(32, 16))


def test_quantize_converts_exactly_the_block_linears():
    model = tiny()
    tokens, labels = torch.randint(0, 64, (2, 16)), torch.tensor([1, 2])
    ref_logits = model.forward_train(tokens, labels)
    summary = quantize_fp8(model)
    expected = block_linear_names(model)
    assert set(summary.converted) == expected and summary.layers == len(expected) == 15
    assert summary.skipped == {}
    for name, module in model.named_modules():
        if name in expected:
            assert isinstance(module, FP8Linear) and module.weight.dtype == FP8
        elif isinstance(module, nn.Linear):  # only the heads' projections are left
            assert name.startswith("heads.") and module.weight.dtype == torch.bfloat16
    assert model.tok_embeddings.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.cls_embedding.parameters())
    weights = sum(model.get_submodule(n).weight.numel() for n in expected)
    rows = sum(model.get_submodule(n).out_features for n in expected)
    assert summary.bytes_before == 2 * weights and summary.bytes_after == weights + 4 * rows
    assert "15 block linear layers converted" in str(summary)
    logits = model.forward_train(tokens, labels)
    assert logits.dtype == torch.float32 and relative_error(logits, ref_logits) < 0.1


def test_layers_scaled_mm_cannot_take_keep_their_precision():
    model = tiny(multiple_of=2)  # SwiGLU hidden size 170: not a multiple of 16
    summary = quantize_fp8(model)
    ffn = {n for n in block_linear_names(model) if ".feed_forward." in n}
    assert set(summary.skipped) == ffn and all("multiple of 16" in why for why in summary.skipped.values())
    assert set(summary.converted) == block_linear_names(model) - ffn
    assert all(type(model.get_submodule(n)) is nn.Linear for n in ffn)
    assert "kept in their precision" in str(summary)


def test_moving_the_quantized_model_keeps_fp8_weights():
    model = tiny()
    quantize_fp8(model)
    layer = model.layers[0].attention.wqkv
    weight, scale = layer.weight.clone(), layer.weight_scale.clone()
    model.to(torch.bfloat16)
    model.half()
    layer = model.layers[0].attention.wqkv
    assert layer.weight.dtype == FP8 and layer.weight_scale.dtype == torch.float32
    assert torch.equal(layer.weight.view(torch.uint8), weight.view(torch.uint8)) and torch.equal(layer.weight_scale, scale)
    assert model.tok_embeddings.weight.dtype == torch.float16 and model.rope.dtype == torch.float32
    model.to("meta")  # moving device still moves the buffers
    assert layer.weight.device.type == "meta" and layer.weight.dtype == FP8
    assert layer.weight_scale.device.type == "meta" and layer.weight_scale.dtype == torch.float32


def test_generation_runs_with_the_quantized_model():
    model = tiny()
    quantize_fp8(model)
    labels = torch.tensor([0, 3, 7])
    g = torch.Generator().manual_seed(0)
    tokens = generate(model, labels, SamplingConfig(cfg_scale=2.0, top_k=8), generator=g)
    assert tokens.shape == (3, 4, 4) and tokens.min() >= 0 and tokens.max() < model.cfg.vocab_size


def test_a_float32_model_is_refused():
    model = tiny(torch.float32)
    with pytest.raises(ValueError, match=r"bf16 or fp16 model.*torch\.float32"):
        quantize_fp8(model)
    assert not any(isinstance(m, FP8Linear) for m in model.modules())  # nothing half-converted


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fp8_linear_on_the_gpu_matches_the_half_matmul(dtype):
    linear = nn.Linear(256, 512, bias=False).to("cuda", dtype)
    fp8 = FP8Linear.from_linear(linear)
    for x in (torch.randn(3, 256, device="cuda", dtype=dtype), torch.randn(2, 5, 256, device="cuda", dtype=dtype)):
        out = fp8(x)
        assert out.dtype == dtype and out.device.type == "cuda"
        assert relative_error(out, linear(x)) < REL_ERROR
    model = tiny().cuda()
    quantize_fp8(model)
    tokens = generate(model, torch.arange(4, device="cuda"), SamplingConfig(greedy=True, cfg_scale=2.0))
    assert tokens.shape == (4, 4, 4) and tokens.max() < model.cfg.vocab_size
