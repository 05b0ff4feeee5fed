"""benchmarks/roofline.py: the work it counts matches the geometry, and measured rows find their ceilings."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nar.model import NARConfig
from nar.model.flops import sampling_flops_per_image
from nar.model.fp8 import FP8Linear, quantize_fp8
from nar.model.layers import KVCache
from nar.sampling.bench import random_model, schedule_config, variant_method
from nar.sampling.fast import FastSampler
from nar.sampling.logits import SamplingConfig
from nar.tokenizers.cost import decode_cost
from script_helpers import load_script


@pytest.fixture(scope="module")
def roofline():
    return load_script("roofline.py")


def test_counted_work_follows_the_geometry(roofline):
    cfg = NARConfig.from_name("NAR-tiny")
    rows, cols = cfg.grid
    w = roofline.count("NAR-tiny", 8, "one-batch", "bf16")
    # NAR passes: the condition, then the anti-diagonals i + j = 0 … rows + cols - 2 fed one per pass (the last
    # diagonal is produced, never fed); pass k attends to every key fed so far, its own included.
    widths = [1] + [sum(1 for i in range(rows) for j in range(cols) if i + j == d) for d in range(rows + cols - 2)]
    keys = sum(sum(widths[:k + 1]) for k in range(len(widths)))
    assert w.passes == len(widths) == rows + cols - 1
    assert w.fed_rows == 2 * sum(widths)  # CFG: two sequences per image
    per_key = 2 * cfg.kv_heads * cfg.head_dim * 2  # k and v, bf16
    blocks = cfg.n_layer + sum(cfg.blocks_per_axis)
    assert w.kv_bytes == 2 * keys * blocks * per_key
    assert w.flops_block_linear + w.flops_other == pytest.approx(sampling_flops_per_image(cfg, True))
    assert w.logit_bytes == 2 * 2 * cfg.num_cells * cfg.vocab_size * 2
    # two cohorts per pass halve the weight reads of an image; fp8 halves the blocks' weights and the cache
    wave = roofline.count("NAR-tiny", 8, "wavefront", "bf16")
    assert wave.weight_bytes == pytest.approx(w.weight_bytes / 2) and wave.kv_bytes == w.kv_bytes
    fp8 = roofline.count("NAR-tiny", 8, "one-batch", "fp8 weights + fp8 KV")
    assert fp8.kv_bytes < w.kv_bytes and fp8.weight_bytes < w.weight_bytes
    c = roofline.ceilings(w, "H100")
    assert c["ceiling_sum"] == pytest.approx(1e6 / (c["compute_us"] + c["memory_us"]))
    assert c["ceiling_max"] >= c["ceiling_sum"]


def test_decode_floor_counts_the_decoders_work(roofline):
    """A decode's floor: its counted FLOPs at the bf16 peak, its convolutions' traffic and a batch's share of
    its weights at the bandwidth."""
    cost = decode_cost("vq-tiny-emoji", [4, 4])
    card = roofline.CARDS["H100"]
    for batch in (1, 8):
        d = roofline.decode_us("vq-tiny-emoji", [4, 4], batch, "H100")
        assert d["decode_compute_us"] == pytest.approx(1e6 * cost.flops / (card["bf16"] * 1e12))
        moved = cost.conv_bytes + cost.weight_bytes / batch
        assert d["decode_memory_us"] == pytest.approx(1e6 * moved / (card["tbps"] * 1e12))
        assert d["decode_ceiling"] == pytest.approx(1e6 / (d["decode_compute_us"] + d["decode_memory_us"]))
    one = roofline.decode_us("vq-tiny-emoji", [4, 4], 1, "H100")
    assert d["decode_ceiling"] > one["decode_ceiling"]  # a batch shares each weight read


def test_measured_rows_are_matched_to_their_ceiling(roofline, tmp_path):
    bench = {"preset": "NAR-tiny", "overrides": {}, "dtype": "bf16", "device_name": "NVIDIA H200", "grid": [4, 4],
             "tokenizer": "vq-tiny-emoji", "cfg_scale": 2.0,
             "rows": [{"method": "nar+compile+wavefront", "batch": 8, "images_per_s": 100.0, "execution": "x"},
                      {"method": "raster", "batch": 8, "images_per_s": 5.0},
                      {"method": "nar", "batch": 8, "images_per_s": 50.0, "execution": "cuda-graph+compile"},
                      {"method": "nar+compile+wavefront+decode", "batch": 8, "images_per_s": 40.0, "execution": "x"},
                      {"method": "decode:vq-tiny-emoji:bf16", "batch": 8, "images_per_s": 30.0, "execution": "y"},
                      {"method": "decode:vq-tiny-emoji:fp32", "batch": 8, "images_per_s": 20.0, "execution": "z"}]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    out = tmp_path / "out"
    assert roofline.main(["--presets", "NAR-tiny", "--batches", "8", "--cards", "H200", "--measured", str(path),
                          "--decoder", "vq-tiny-emoji", "--targets", "NAR-tiny:8:100", "NAR-tiny:8:40:decode",
                          "--out", str(out)]) == 0
    saved = json.loads((out / "roofline.json").read_text())
    rows = saved["rows"]
    wave = next(r for r in rows if (r["sampler"], r["precision"]) == ("wavefront", "bf16"))
    assert saved["targets"][0]["needs"]["H200, wavefront, bf16"] == pytest.approx(100 / wave["ceiling_sum"])
    hit = {(r["sampler"], r["precision"]): [m["method"] for m in r["measured"]] for r in rows}
    assert hit[("wavefront", "bf16")] == ["nar+compile+wavefront"]
    assert hit[("one-batch", "bf16")] == ["nar (compiled)"] and hit[("one-batch", "fp8 weights")] == []
    text = (out / "roofline.md").read_text()
    assert "nar+compile+wavefront 100.0 (" in text
    # tokens + decode: the decode's floor after the tokens' own, the decode row and target matched to it
    decode = roofline.decode_us("vq-tiny-emoji", [4, 4], 8, "H200")["decode_ceiling"]
    assert wave["ceiling_with_decode"] == pytest.approx(1 / (1 / wave["ceiling_sum"] + 1 / decode))
    assert [m["method"] for m in wave["measured_with_decode"]] == ["nar+compile+wavefront+decode"]
    assert saved["targets"][1]["decode"] is True
    assert saved["targets"][1]["needs"]["H200, wavefront, bf16"] == pytest.approx(40 / wave["ceiling_with_decode"])
    assert "nar+compile+wavefront+decode 40.0 (" in text
    # the decoder alone: its bf16 row only, against its own ceiling
    assert [(m["images_per_s"], m["decode_ceiling"]) for m in saved["decoders"]] == [(30.0, pytest.approx(decode))]
    with pytest.raises(SystemExit):
        roofline.main(["--presets", "NAR-tiny", "--targets", "NAR-tiny:8:40:pixels"])


@pytest.mark.parametrize("schedule", ["nar", "par-2x2"])
def test_counted_rows_are_the_rows_the_sampler_feeds(roofline, monkeypatch, schedule):
    """``fed_rows`` and the blocks' FLOPs follow the rows the first block really takes in a guided generation
    (PAR's transition tokens are among a pass's positions, counted once)."""
    cfg = schedule_config(NARConfig.from_name("NAR-tiny"), schedule)
    monkeypatch.setattr(roofline, "NARConfig", SimpleNamespace(from_name=lambda name: cfg))
    batch = 2
    model = random_model(cfg, torch.device("cpu"), torch.float32)
    seen = []
    model.blocks()[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0] * args[0].shape[1]))
    FastSampler(model, batch, SamplingConfig(cfg_scale=2.0), cuda_graph=False, attention="sdpa")(
        torch.zeros(batch, dtype=torch.long))
    w = roofline.count("NAR-tiny", 8, "one-batch", "bf16")
    assert w.fed_rows == sum(seen) // batch
    block_linear = sum(m.weight.numel() for b in model.blocks() for m in b.modules() if isinstance(m, nn.Linear))
    assert w.flops_block_linear == 2 * block_linear * sum(seen) // batch
    assert w.flops_block_linear + w.flops_other == sampling_flops_per_image(cfg, True)


def test_bytes_are_what_the_fp8_caches_and_weights_hold(roofline):
    """fp8 KV: an e4m3 key and value row per head and token plus the float32 scale of each; fp8 weights: the
    blocks' e4m3 weights plus a float32 scale per output row, as the quantized model stores them."""
    cfg = NARConfig.from_name("NAR-tiny")
    blocks = cfg.n_layer + sum(cfg.blocks_per_axis)
    w = roofline.count("NAR-tiny", 8, "one-batch", "bf16")
    for precision, kv_dtype in (("bf16", None), ("bf16 weights + fp8 KV", torch.float8_e4m3fn),
                                ("fp8 weights + fp8 KV", torch.float8_e4m3fn)):
        cache = KVCache(1, cfg.kv_heads, 1, cfg.head_dim, torch.bfloat16, "cpu", "sdpa", kv_dtype)
        per_key = sum(t.numel() * t.element_size() for t in cache.prefix(None) if t is not None)  # one slot
        fp8 = roofline.count("NAR-tiny", 8, "one-batch", precision)
        keys = w.kv_bytes / (2 * blocks * 2 * cfg.kv_heads * cfg.head_dim * 2)  # bf16: 2 sequences, k and v
        assert fp8.kv_bytes == 2 * keys * blocks * per_key, precision
    model = random_model(cfg, torch.device("cpu"), torch.bfloat16)
    quantize_fp8(model)
    held = sum(b.numel() * b.element_size() for block in model.blocks() for m in block.modules()
               if isinstance(m, (FP8Linear, nn.Linear)) for b in (*m.buffers(recurse=False), *m.parameters(False)))
    heads = sum(h.proj.weight.numel() * 2 for h in model.heads)
    for precision in ("fp8 weights", "fp8 weights + fp8 KV"):
        fp8 = roofline.count("NAR-tiny", 8, "one-batch", precision)
        assert fp8.weight_bytes == pytest.approx((held + heads) * fp8.passes / 8), precision
    # an fp8 cache alone leaves the matrix products in bf16
    kv_only = roofline.count("NAR-tiny", 8, "one-batch", "bf16 weights + fp8 KV")
    assert roofline.ceilings(kv_only, "H100")["compute_us"] == roofline.ceilings(w, "H100")["compute_us"]
    assert roofline.ceilings(fp8, "H100")["compute_us"] < roofline.ceilings(w, "H100")["compute_us"]


def _bench_file(path, cfg_scale, rows):
    path.write_text(json.dumps({"preset": "NAR-tiny", "overrides": [], "dtype": "bf16", "device_name": "NVIDIA H200",
                                "grid": [4, 4], "tokenizer": None, "cfg_scale": cfg_scale, "rows": rows}))
    return path


def test_measured_rows_take_their_precision_and_guidance(roofline, tmp_path):
    """A row meets the ceiling of its own weights and cache precision; an unguided file (half the work of the
    CFG ceilings) is left out, with a note."""
    variants = ["wavefront", "fp8+wavefront", "fp8kv+wavefront", "fp8+fp8kv+wavefront"]
    rows = [{"method": variant_method(v), "batch": 8, "images_per_s": 10.0 + i, "execution": "cuda-graph"}
            for i, v in enumerate(variants)]
    guided = _bench_file(tmp_path / "guided.json", 2.0, rows)
    unguided = _bench_file(tmp_path / "unguided.json", 1.0, rows)
    out = tmp_path / "out"
    assert roofline.main(["--presets", "NAR-tiny", "--batches", "8", "--cards", "H200", "--decoder", "vq-tiny-emoji",
                          "--measured", str(guided), str(unguided), "--out", str(out)]) == 0
    saved = json.loads((out / "roofline.json").read_text())
    hit = {r["precision"]: [(m["method"], m["file"]) for m in r["measured"]]
           for r in saved["rows"] if r["sampler"] == "wavefront"}
    assert hit == {"bf16": [(variant_method("wavefront"), guided.as_posix())],
                   "fp8 weights": [(variant_method("fp8+wavefront"), guided.as_posix())],
                   "bf16 weights + fp8 KV": [(variant_method("fp8kv+wavefront"), guided.as_posix())],
                   "fp8 weights + fp8 KV": [(variant_method("fp8+fp8kv+wavefront"), guided.as_posix())]}
    assert saved["skipped"] == [{"file": unguided.as_posix(), "why": "cfg_scale 1.0: unguided, the ceilings count CFG"}]
    assert unguided.as_posix() in (out / "roofline.md").read_text()
