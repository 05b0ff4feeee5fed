"""benchmarks/pass_profile.py: kernel names fall in the right families, and the report runs end to end on CPU."""

from __future__ import annotations

import pytest
import torch

from nar.model import NARConfig
from nar.sampling.bench import random_model, schedule_config
from nar.sampling.logits import SamplingConfig
from nar.sampling.wavefront import WavefrontSampler
from script_helpers import load_script, run_script


@pytest.fixture(scope="module")
def script():
    return load_script("pass_profile.py")


@pytest.mark.parametrize("name, family", [
    # kernel names as the H200 profile recorded them (benchmarks/results/h200-2026-11-26-session2/probe.txt)
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1x1_cga1", "decode attention"),
    ("_prefix_attention_kernel", "decode attention"),
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_TNT", "matmul"),
    ("triton_tem_fused_mm_0", "matmul"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0", "fused by Inductor"),
    ("triton_red_fused_argmax_log_sub_1", "sampling"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::bfloat16_copy_kernel_cuda(at::Tensor",
     "copy / cache write / gather"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>", "norm"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::CUDAFunctor_add<c10::BFloat16>>",
     "eager elementwise"),
    ("aten::mm", "matmul"),
    ("aten::view", "views, allocation, dispatch"),
    ("TorchDynamo Cache Lookup", "compiled-code guards and calls"),
    ("cudaStreamSynchronize", "other"),
])
def test_kernel_families(script, name, family):
    assert script.kernel_family(name) == family


def test_profile_report_on_cpu(tmp_path):
    out = tmp_path / "profile.md"
    proc = run_script("pass_profile.py", "--preset", "NAR-tiny", "--set", "grid=[4, 6]", "--batch", "2",
                      "--periods", "1", "--top", "5", "--out", str(out))
    report = out.read_text()
    assert report in proc.stdout
    assert "NAR-tiny 4x6, batch 2 per cohort" in report and "--batch 2" in report
    # 4 + 6 - 1 passes; a period feeds every pass of both cohorts: 2 cohorts x 24 cells x 2 samples x 2 (CFG)
    assert "9 passes per period" in report and "192 fed rows per period" in report
    table = [line for line in report.splitlines() if line.startswith("| ") and "ms per period" not in line]
    families = [line for line in table if line.count("|") == 6 and not line.startswith("| `")]
    shares = [float(line.split("|")[3].strip().rstrip("%")) for line in families if not line.startswith("| all")]
    assert abs(sum(shares) - 100) < 0.5 and any(line.startswith("| matmul |") for line in families)
    assert len([line for line in table if line.startswith("| `")]) == 5


@pytest.mark.parametrize("schedule", ["nar", "par-2x2"])
def test_fed_rows_are_the_rows_the_blocks_take(script, schedule):
    """``fed_rows`` is what the first block takes in one period, whether a pass runs alone or beside the other
    cohort's (PAR's transition tokens are among a pass's positions, counted once)."""
    cfg = schedule_config(NARConfig.from_name("NAR-tiny"), schedule)
    model = random_model(cfg, torch.device("cpu"), torch.float32)
    sampler = WavefrontSampler(model, 2, SamplingConfig(cfg_scale=2.0), cuda_graph=False)
    labels = torch.arange(2) % cfg.num_classes
    a, b = sampler.slots
    a.load(labels, 0, both=True)
    b.load(labels.flip(0), 1, both=True)
    block, seen = model.blocks()[0], []
    block.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0] * args[0].shape[1]))
    segments = block.forward_segments

    def counted(xs, *args, **kwargs):
        seen.extend(x.shape[0] * x.shape[1] for x in xs)
        return segments(xs, *args, **kwargs)

    block.forward_segments = counted
    sampler.run_period()
    assert script.fed_rows(sampler) == sum(seen)
