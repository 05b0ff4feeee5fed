"""How fast NAR sampling could be on a card, from the work it must do: a floor on the time of one image.

No device is needed: the model is counted, not run. For a preset, a batch and a sampler (one batch in flight, or
the wavefront's two cohorts), one image's tokens take at least

  * its **matrix products** (``nar.model.flops.sampling_flops_per_image``: every pass's projections, heads and
    the exact prefix attention, CFG rows included) at the card's dense peak, bf16 or, for the blocks' linear
    layers under ``fp8`` weights, fp8;
  * its **KV-cache reads**: every pass of every block reads the keys and values of the prefix it attends to
    (``kv_limit`` of the decode layout), once per sequence (two per image under CFG): bf16, or under an ``fp8``
    KV cache e4m3 with the float32 scale of every key and value row (a token of one head) the kernel reads too;
  * its share of the **weight reads**: every pass reads the weights once for all the sequences it feeds (a
    one-batch pass serves ``batch`` images, a wavefront pass ``2 x batch``); fp8 block weights with their float32
    scale per output row;
  * its **logits**: written once by the head projection and read once by the draw (half precision, CFG rows
    included), the least any sampler moves;

at the card's memory bandwidth. The kernels of a pass run one after another, so the floor adds the compute
time and the memory time ("sum"); "max" (compute and memory perfectly overlapped) is the looser bound.

Tokens + pixels (``--decoder``, the VQ-16 decoder by default): one image's decode costs its convolutions'
and attention's FLOPs at the bf16 peak, plus every convolution's input read once and output written once
(bf16; the least a decoder moves when each norm, activation and residual add is fused into a convolution)
and its share of the decoder's weights at the bandwidth (``nar.tokenizers.cost``). A tokens + decode ceiling
puts the decode after the tokens' "sum" floor: tokens and pixels share one card, and both already fill it.
Activations between kernels, launch gaps and imperfect kernels are left out: a real sampler is slower than
both. Given ``nar bench`` result files (``--measured``), each matching row (same card, preset, batch, sampler,
weights and KV-cache precision) gets its measured images/s and the fraction of the "sum" ceiling it reaches.
The ceilings count classifier-free guidance (two sequences per image, whatever the scale): an unguided file
(``cfg_scale`` 1.0, half the work) is left out, and the report says so.

    .venv/bin/python benchmarks/roofline.py --measured benchmarks/results/h200-2026-12-04/bench-*.json \\
        --out benchmarks/results/roofline-2026-12-07
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from nar.model import NARConfig, NARModel
from nar.model.flops import sampling_flops_per_image
from nar.model.fp8 import fp8_unsupported
from nar.sampling.bench import PEAK_BF16_TFLOPS, card_of
from nar.tokenizers.cost import decode_cost

# The SXM cards: dense bf16 peak as `nar bench` counts it (PEAK_BF16_TFLOPS), fp8 twice that (Hopper's tensor
# cores), and the datasheet's HBM bandwidth in TB/s.
CARDS = {card: {"bf16": PEAK_BF16_TFLOPS[card], "fp8": 2 * PEAK_BF16_TFLOPS[card], "tbps": tbps}
         for card, tbps in (("H100", 3.35), ("H200", 4.8))}
# (weights, kv): the blocks' linear layers (heads, embeddings and attention stay bf16) and the KV cache, each bf16
# or float8 e4m3 with a float32 scale per row; every combination is a sampler option (fp8, fp8kv).
PRECISIONS = {"bf16": ("bf16", "bf16"), "fp8 weights": ("fp8", "bf16"), "bf16 weights + fp8 KV": ("bf16", "fp8"),
              "fp8 weights + fp8 KV": ("fp8", "fp8")}


def precision_of(method: str) -> str:
    """The :data:`PRECISIONS` entry of a ``nar bench`` method (``nar+wavefront+fp8+fp8kv``: its options)."""
    parts = method.split("+")
    pair = ("fp8" if "fp8" in parts else "bf16", "fp8" if "fp8kv" in parts else "bf16")
    return next(name for name, p in PRECISIONS.items() if p == pair)


@dataclass
class Work:
    """What one image's tokens cost (CFG included), independent of the card."""

    preset: str
    batch: int
    sampler: str
    precision: str
    passes: int
    fed_rows: int  # trunk rows per image
    flops_block_linear: float
    flops_other: float  # heads, prefix attention
    flops_fp8: float  # of flops_block_linear, those of the layers fp8 weights convert (0 in bf16)
    kv_bytes: float
    weight_bytes: float
    logit_bytes: float

    @property
    def bytes(self) -> float:
        return self.kv_bytes + self.weight_bytes + self.logit_bytes


def count(preset: str, batch: int, sampler: str, precision: str, guided: bool = True) -> Work:
    cfg = NARConfig.from_name(preset)
    with torch.device("meta"):
        model = NARModel(cfg)
    seqs = 2 if guided else 1
    blocks = model.blocks()
    weights_in, kv_in = PRECISIONS[precision]
    linears = [m for b in blocks for m in b.modules() if isinstance(m, nn.Linear)]
    fp8 = [m for m in linears if weights_in == "fp8" and fp8_unsupported(m) is None]  # what quantize_fp8 converts
    block_linear = sum(m.weight.numel() for m in linears)
    block_fp8 = sum(m.weight.numel() for m in fp8)
    head_proj = sum(h.proj.weight.numel() for h in model.heads)
    steps = model.decode_layout.steps
    rows = seqs * sum(len(s.positions) for s in steps)  # positions hold PAR's transition tokens too
    flops = sampling_flops_per_image(cfg, guided)
    f_blocks = 2.0 * block_linear * rows
    kv_keys = sum(s.kv_limit for s in steps)  # keys read per block per sequence over a generation
    # per key, every kv head's key and value row: bf16, or e4m3 and the row's float32 scale (nar.model.layers.KVCache)
    per_key = 2 * cfg.kv_heads * (cfg.head_dim + 4 if kv_in == "fp8" else 2 * cfg.head_dim)
    kv = seqs * kv_keys * len(blocks) * per_key
    images_per_pass = batch * (2 if sampler == "wavefront" else 1)
    # an FP8Linear holds its e4m3 weight and a float32 scale per output row; the other layers stay bf16
    block_bytes = 2 * (block_linear - block_fp8) + block_fp8 + 4 * sum(m.out_features for m in fp8)
    weights = (block_bytes + head_proj * 2) * len(steps) / images_per_pass
    logits = 2 * seqs * cfg.num_cells * cfg.vocab_size * 2  # half-precision logits written once, read once
    return Work(preset, batch, sampler, precision, len(steps), rows, f_blocks, flops - f_blocks,
                2.0 * block_fp8 * rows, kv, weights, logits)


def ceilings(w: Work, card: str) -> dict[str, float]:
    c = CARDS[card]
    t_compute = (w.flops_fp8 / (c["fp8"] * 1e12)
                 + (w.flops_block_linear - w.flops_fp8 + w.flops_other) / (c["bf16"] * 1e12))
    t_memory = w.bytes / (c["tbps"] * 1e12)
    return {"compute_us": 1e6 * t_compute, "memory_us": 1e6 * t_memory,
            "kv_us": 1e6 * w.kv_bytes / (c["tbps"] * 1e12),
            "ceiling_sum": 1.0 / (t_compute + t_memory), "ceiling_max": 1.0 / max(t_compute, t_memory)}


def decode_us(tokenizer: str, grid: list[int], batch: int, card: str) -> dict[str, float]:
    """The floor of one image's decode on ``card`` (bf16, ``batch`` images sharing each weight read)."""
    cost = decode_cost(tokenizer, grid)
    c = CARDS[card]
    compute = cost.flops / (c["bf16"] * 1e12)
    memory = (cost.conv_bytes + cost.weight_bytes / batch) / (c["tbps"] * 1e12)
    return {"decode_gflop": cost.flops / 1e9, "decode_mb": (cost.conv_bytes + cost.weight_bytes / batch) / 1e6,
            "decode_compute_us": 1e6 * compute, "decode_memory_us": 1e6 * memory,
            "decode_ceiling": 1.0 / (compute + memory)}


def measured_rows(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """``nar bench`` rows of NAR with their card, preset, sampler and precision (:func:`precision_of`): tokens
    only, or tokens + decode (``decode`` true, with the tokenizer the file names); and the bf16 files of a known
    card left out because they ran unguided or do not say, ``{"file", "why"}`` each."""
    out, skipped = [], []
    for path in paths:
        data = json.loads(path.read_text())
        card = card_of(str(data.get("device_name", "")))
        if card not in CARDS or data.get("dtype") != "bf16" or data.get("overrides"):
            continue
        scale = data.get("cfg_scale")
        if scale is None or float(scale) == 1.0:  # the ceilings count two sequences per image
            why = "no cfg_scale recorded" if scale is None else f"cfg_scale {float(scale)}: unguided"
            skipped.append({"file": path.as_posix(), "why": f"{why}, the ceilings count CFG"})
            continue
        for row in data.get("rows", []):
            method = str(row.get("method", ""))
            parts = method.split("+")
            if parts[0] != "nar" or method == "nar-reference":
                continue
            precision = precision_of(method)
            if "compile" in str(row.get("execution", "")) and "compile" not in parts:
                method += " (compiled)"  # files from before the variants named it
            out.append({"card": card, "preset": data.get("preset"), "batch": int(row["batch"]), "method": method,
                        "sampler": "wavefront" if "wavefront" in parts else "one-batch", "precision": precision,
                        "decode": "decode" in parts, "tokenizer": data.get("tokenizer", "vq-16"),
                        "images_per_s": float(row["images_per_s"]), "file": path.as_posix()})
    return out, skipped


def measured_decoders(paths: list[Path]) -> list[dict]:
    """``nar bench --tokenizer-decode`` rows of a decoder alone in bf16 (``decode:<tokenizer>:bf16``)."""
    out = []
    for path in paths:
        data = json.loads(path.read_text())
        card = card_of(str(data.get("device_name", "")))
        for row in data.get("rows", []) if card in CARDS else []:
            kind, _, rest = str(row.get("method", "")).partition(":")
            tokenizer, _, dtype = rest.partition(":")
            if kind == "decode" and dtype == "bf16":
                out.append({"card": card, "tokenizer": tokenizer, "batch": int(row["batch"]), "grid": data["grid"],
                            "execution": str(row.get("execution", "")), "images_per_s": float(row["images_per_s"]),
                            "file": path.as_posix()})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["NAR-L", "NAR-B"])
    ap.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--cards", nargs="+", default=sorted(CARDS), choices=sorted(CARDS))
    ap.add_argument("--measured", nargs="*", type=Path, default=[], help="nar bench JSON files to compare with")
    ap.add_argument("--targets", nargs="*", default=[], metavar="PRESET:BATCH:IMG_PER_S[:decode]",
                    help="speed targets to set against the ceilings (e.g. NAR-L:256:1300; NAR-L:64:600:decode for "
                         "tokens + decoded pixels)")
    ap.add_argument("--decoder", default="vq-16", help="tokenizer preset whose decoder the tokens + decode rows use")
    ap.add_argument("--out", type=Path, default=None, help="folder for roofline.md and roofline.json")
    args = ap.parse_args(argv)
    command = shlex.join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])

    measured, skipped = measured_rows(args.measured)
    table = []
    for preset in args.presets:
        for batch in args.batches:
            for sampler in ("one-batch", "wavefront"):
                for precision in PRECISIONS:
                    w = count(preset, batch, sampler, precision)
                    for card in args.cards:
                        row = {**asdict(w), "card": card, **ceilings(w, card)}
                        hits = [m for m in measured if (m["card"], m["preset"], m["batch"], m["sampler"],
                                                        m["precision"]) == (card, preset, batch, sampler, precision)]
                        row["measured"] = [{k: m[k] for k in ("method", "images_per_s", "file")}
                                           for m in hits if not m["decode"]]
                        grid = NARConfig.from_name(preset).grid
                        row |= decode_us(args.decoder, grid, batch, card)
                        row["ceiling_with_decode"] = 1.0 / (1.0 / row["ceiling_sum"] + 1.0 / row["decode_ceiling"])
                        row["measured_with_decode"] = [{k: m[k] for k in ("method", "images_per_s", "file")}
                                                       for m in hits if m["decode"] and m["tokenizer"] == args.decoder]
                        table.append(row)

    lines = [
        "# Sampling roofline: the fewest seconds an image's tokens can take (guided: two sequences per image)",
        "",
        f"Command: `{command}`. A model of the work, not a measurement: see the script's docstring for what it "
        "counts and leaves out. Per image: FLOPs at the card's dense peak (`compute`), KV-cache, weight and logit "
        "bytes at its HBM bandwidth (`memory`, of which `KV`); the ceilings are images/s with compute and memory "
        "one after the other (`sum`) or overlapped (`max`). Cards: "
        + "; ".join(f"{k} {v['bf16']:g} bf16 / {v['fp8']:g} fp8 TFLOP/s, {v['tbps']:g} TB/s" for k, v in CARDS.items())
        + " (datasheet, SXM).",
        "",
        "| preset | batch | sampler | precision | card | GFLOP | MB read (KV) | compute us | memory us (KV) | "
        "ceiling sum | ceiling max | measured img/s (of sum) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    def case(r: dict) -> str:
        return f"| {r['preset']} | {r['batch']} | {r['sampler']} | {r['precision']} | {r['card']} | "

    def seen(measured: list[dict], ceiling: float) -> str:
        return ", ".join(f"{m['method']} {m['images_per_s']:.1f} ({m['images_per_s'] / ceiling:.0%})" for m in measured)

    for r in table:
        gflop = (r["flops_block_linear"] + r["flops_other"]) / 1e9
        mb = (r["kv_bytes"] + r["weight_bytes"] + r["logit_bytes"]) / 1e6
        lines.append(f"{case(r)}{gflop:.0f} | {mb:.0f} ({r['kv_bytes'] / 1e6:.0f}) | {r['compute_us']:.0f} | "
                     f"{r['memory_us']:.0f} ({r['kv_us']:.0f}) | {r['ceiling_sum']:.0f} | {r['ceiling_max']:.0f} | "
                     f"{seen(r['measured'], r['ceiling_sum'])} |")
    if skipped:
        lines += ["", "Measured files left out: " + "; ".join(f"`{m['file']}` ({m['why']})" for m in skipped) + "."]
    lines += [
        "",
        f"## Tokens + {args.decoder} decode, images/s of decoded pixels",
        "",
        f"The {args.decoder} decoder in bf16 after the tokens (see the docstring): its FLOPs at the bf16 peak and its "
        "convolutions' input and output bytes plus its share of the weights at the bandwidth (`decode us`, compute "
        "+ memory), alone (`decode ceiling`) and after the tokens' `sum` floor (`with decode`).",
        "",
        "| preset | batch | sampler | precision | card | decode GFLOP | decode MB | decode us | decode ceiling | "
        "tokens ceiling | with decode | measured img/s (of with decode) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(f"{case(r)}{r['decode_gflop']:.0f} | {r['decode_mb']:.0f} | "
                     f"{r['decode_compute_us']:.0f} + {r['decode_memory_us']:.0f} | {r['decode_ceiling']:.0f} | "
                     f"{r['ceiling_sum']:.0f} | {r['ceiling_with_decode']:.0f} | "
                     f"{seen(r['measured_with_decode'], r['ceiling_with_decode'])} |")
    decoders = [m for m in measured_decoders(args.measured) if m["tokenizer"] == args.decoder]
    if decoders:
        lines += ["", f"The {args.decoder} decoder alone (`nar bench --tokenizer-decode`, bf16), measured against its "
                  "ceiling:", "", "| card | batch | execution | measured img/s | decode ceiling | of ceiling |",
                  "|---|---|---|---|---|---|"]
        for m in decoders:
            m["decode_ceiling"] = decode_us(args.decoder, m["grid"], m["batch"], m["card"])["decode_ceiling"]
            lines.append(f"| {m['card']} | {m['batch']} | {m['execution']} | {m['images_per_s']:.1f} | "
                         f"{m['decode_ceiling']:.0f} | {m['images_per_s'] / m['decode_ceiling']:.0%} |")
    targets = []
    for spec in args.targets:
        try:
            preset, batch, speed, *what = spec.split(":")
            if what not in ([], ["decode"]):
                raise ValueError(spec)
            target = {"preset": preset, "batch": int(batch), "images_per_s": float(speed), "decode": bool(what)}
        except ValueError:
            ap.error(f"--targets: {spec!r} is not PRESET:BATCH:IMG_PER_S[:decode]")
        ceiling = "ceiling_with_decode" if target["decode"] else "ceiling_sum"
        target["needs"] = {f"{r['card']}, {r['sampler']}, {r['precision']}": target["images_per_s"] / r[ceiling]
                           for r in table if (r["preset"], r["batch"]) == (preset, target["batch"])}
        targets.append(target)
    if targets:
        lines += ["", "Each target as a fraction of its ceiling (`sum`, or `with decode` for a tokens + decode "
                  "target): how close to the floor a sampler must come.", "",
                  "| card, sampler, precision | " + " | ".join(
                      f"{t['preset']} batch {t['batch']} >= {t['images_per_s']:g} img/s"
                      + (" with decode" if t["decode"] else "") for t in targets) + " |",
                  "|---|" + "---|" * len(targets)]
        for case in dict.fromkeys(k for t in targets for k in t["needs"]):
            lines.append(f"| {case} | " + " | ".join(
                f"{t['needs'][case]:.0%}" if case in t["needs"] else "" for t in targets) + " |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "roofline.md").write_text(report)
        saved = {"command": command, "cards": CARDS, "rows": table, "decoders": decoders, "targets": targets,
                 "skipped": skipped}
        (args.out / "roofline.json").write_text(json.dumps(saved, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
