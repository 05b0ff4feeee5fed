"""``nar sample`` — images from prompts (text-to-image) or class ids, from our checkpoints or official ones.

    nar sample --ckpt runs/demo-shapes-t2i/nar/checkpoints/last.ckpt --prompt "a photo of a red circle" --out out/
    nar sample --ckpt t2i_XL.pt --official --n-head 20 --grid 16 16 --tokenizer vq_ds16_t2i.pt \\
        --text-encoder t5 --text-encoder-path /models/flan-t5-xl --prompt-file prompts.txt --cfg 4.0 --out out/
    nar sample --ckpt runs/demo-emoji/nar/checkpoints/last.ckpt --classes 1 2 3 --n-per-prompt 4 --out out/

Writes ``<i>_<j>.png`` (sample ``j`` of prompt/class ``i``) with the prompt beside it in
``<i>_<j>.txt`` under ``<out>/images/`` (so ``nar eval-samples <out>/images --metrics text`` scores shapes
prompts), ``<out>/grid.png``
(one row per prompt) and ``samples.json``. Our checkpoints carry the model, tokenizer and text-encoder
settings; official ``.pt`` files need ``--official`` with ``--n-head`` (and ``--grid``) or ``--config``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample PNGs (+ a grid) from prompts or class ids with a checkpoint",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="our Lightning .ckpt (EMA weights) or an official generator .pt")
    p.add_argument("--official", action="store_true", help="--ckpt is an official NAR .pt (t2i or c2i)")
    p.add_argument("--n-head", type=int, default=None, help="official checkpoints: attention heads (not stored)")
    p.add_argument("--grid", type=int, nargs="+", default=None, help="official checkpoints: token grid (default 16 16)")
    p.add_argument("--config", action="append", default=[],
                   help="run YAML(s) describing an official checkpoint's model (instead of --n-head/--grid)")
    p.add_argument("--tokenizer", default=None, help="tokenizer file/preset (default: the one the run used)")
    p.add_argument("--tokenizer-config", default=None, help="preset describing an official VQ checkpoint")
    p.add_argument("--prompt", action="append", default=[], help="a caption (repeat for several)")
    p.add_argument("--prompt-file", default=None, help="one caption per line (blank lines and '#' comments skipped)")
    p.add_argument("--classes", type=int, nargs="+", default=None, help="class ids (class-conditional models)")
    p.add_argument("--n-per-prompt", type=int, default=1, help="samples per prompt / class")
    p.add_argument("--cfg", type=float, default=None, help="CFG scale (default: the run's sampling.cfg_scale, else 4.0)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--text-encoder", choices=("minilm", "t5"), default=None,
                   help="text encoder kind (default: the run's text.kind; official t2i: t5)")
    p.add_argument("--text-encoder-path", default=None, help="local text-encoder folder (t5: FLAN-T5-XL)")
    p.add_argument("--device", default=None, help="torch device (default cuda when available)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--compile-decoder", action="store_true",
                   help="on a GPU, torch.compile the tokenizer's decoder (pays off for many batches)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def read_prompts(prompts: Sequence[str] = (), prompt_file: str | None = None) -> list[str]:
    """``--prompt`` values then the lines of ``--prompt-file`` (blank lines and ``#`` comments skipped)."""
    from nar.errors import ConfigError

    out = [p for p in prompts if p.strip()]
    if prompt_file:
        path = Path(prompt_file)
        if not path.is_file():
            raise ConfigError(f"--prompt-file: {path} does not exist")
        out += [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return out


def load_model(args: argparse.Namespace):
    """``(model in eval mode, run config or None)`` from ``--ckpt`` (ours, or official with its description)."""
    from nar.errors import ConfigError
    from nar.lightning.generator_module import load_generator

    if not args.official:
        if args.n_head is not None or args.grid is not None:
            raise ConfigError("--n-head/--grid describe official checkpoints; add --official")
        return load_generator(args.ckpt)
    import torch

    from nar.model.official import load_official

    if args.config:
        from nar.lightning.config import load_train_config

        cfg = load_train_config(args.config)
        return load_generator(args.ckpt, cfg)[0], cfg
    if args.n_head is None:
        raise ConfigError("--official needs --n-head (NAR-XL: 20) or --config describing the model")
    overrides: dict[str, Any] = {"grid": list(args.grid)} if args.grid else {}
    obj = torch.load(args.ckpt, map_location="cpu", mmap=True, weights_only=False)
    prefer = "ema" if isinstance(obj, dict) and "ema" in obj else None  # the official EMA weights when saved
    return load_official(args.ckpt, n_head=args.n_head, prefer=prefer, **overrides).eval(), None


def text_encoder_for(model, run_cfg, kind: str | None, path: str | None, device: str | None = None):
    """The run's text encoder (with CLI overrides) on ``device``; official caption models default to FLAN-T5."""
    from dataclasses import replace

    from nar.text import TextEncoderConfig, build_text_encoder

    base = run_cfg.text if run_cfg is not None else TextEncoderConfig(kind="t5" if model.cfg.caption_dim == 2048
                                                                     else "minilm")
    cfg = replace(base, kind=kind or base.kind, path=path if path is not None else base.path,
                  device=device or base.device)
    return build_text_encoder(cfg, model.cfg)


def sample_images(model, tokenizer, conditions: list[Any], *, text_encoder: Callable | None = None,
                  sampling=None, n_per: int = 1, batch_size: int = 32, seed: int = 0,
                  device: str = "cpu") -> Any:
    """Samples for each condition (a prompt, or a class id) → pixels ``[len(conditions) * n_per, 3, H, W]`` in [-1, 1].

    Rows are grouped by condition (``n_per`` consecutive samples each); batch ``b`` uses seed ``seed + b``.
    """
    import torch

    from nar.lightning.callbacks import make_sampler

    model = model.to(device).eval()
    tokenizer = tokenizer.to(device).eval()
    caption = model.cfg.condition == "caption"
    items = [c for c in conditions for _ in range(n_per)]
    images = []
    for b, start in enumerate(range(0, len(items), batch_size)):
        chunk = items[start:start + batch_size]
        if caption:
            feats, mask = text_encoder(list(chunk))
            cond, cond_mask = feats.to(device), mask.to(device)
        else:
            cond, cond_mask = torch.as_tensor(chunk, dtype=torch.long, device=device), None
        sampler = make_sampler(model, len(chunk), sampling, cond_mask=cond_mask)
        generator = torch.Generator(device=device).manual_seed(seed + b)
        with torch.no_grad():
            tokens = sampler(cond, generator=generator)
            images.append(tokenizer.decode(tokens.to(device)).float().clamp(-1, 1).cpu())
    return torch.cat(images)


def run(args: argparse.Namespace) -> int:
    import torch

    from nar.errors import ConfigError
    from nar.lightning.callbacks import image_grid, save_png, to_unit
    from nar.lightning.generator_module import load_frozen_tokenizer
    from nar.sampling import SamplingConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.n_per_prompt < 1 or args.batch_size < 1:
        raise ConfigError("--n-per-prompt and --batch-size must be >= 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, run_cfg = load_model(args)
    caption = model.cfg.condition == "caption"
    prompts = read_prompts(args.prompt, args.prompt_file)
    if caption:
        if args.classes:
            raise ConfigError(f"{args.ckpt} is a text-to-image model: give --prompt/--prompt-file, not --classes")
        if not prompts:
            raise ConfigError("text-to-image checkpoint: give --prompt \"...\" (repeatable) or --prompt-file FILE")
        conditions: list[Any] = prompts
    else:
        if prompts:
            raise ConfigError(f"{args.ckpt} is class-conditional: give --classes, not prompts")
        if not args.classes:
            raise ConfigError("class-conditional checkpoint: give --classes 1 2 3")
        bad = [c for c in args.classes if not 0 <= c < model.cfg.num_classes]
        if bad:
            raise ConfigError(f"--classes {bad} outside 0..{model.cfg.num_classes - 1}")
        conditions = list(args.classes)

    tok_path = args.tokenizer or (run_cfg.tokenizer.path if run_cfg is not None else "")
    if not tok_path:
        raise ConfigError("--tokenizer is required (the checkpoint names no tokenizer)")
    tok_config = args.tokenizer_config or (run_cfg.tokenizer.config if run_cfg is not None and not args.tokenizer else "")
    tokenizer = load_frozen_tokenizer(tok_path, tok_config or "")
    if getattr(tokenizer, "codebook_size", model.cfg.vocab_size) > model.cfg.vocab_size:
        raise ConfigError(f"tokenizer {tok_path} has {tokenizer.codebook_size} codes, the model only "
                          f"{model.cfg.vocab_size}")
    base = run_cfg.sampling if run_cfg is not None else SamplingConfig(cfg_scale=4.0)
    sampling = SamplingConfig(
        cfg_scale=args.cfg if args.cfg is not None else base.cfg_scale, cfg_interval=base.cfg_interval,
        temperature=args.temperature if args.temperature is not None else base.temperature,
        top_k=args.top_k if args.top_k is not None else base.top_k,
        top_p=args.top_p if args.top_p is not None else base.top_p)
    encoder = text_encoder_for(model, run_cfg, args.text_encoder, args.text_encoder_path, device) if caption else None
    if args.compile_decoder and str(device).startswith("cuda"):
        tokenizer.decoder.compile()

    pixels = sample_images(model, tokenizer, conditions, text_encoder=encoder, sampling=sampling,
                           n_per=args.n_per_prompt, batch_size=args.batch_size, seed=args.seed, device=device)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    unit = to_unit(pixels)
    records = []
    for i, cond in enumerate(conditions):
        for j in range(args.n_per_prompt):
            stem = f"{i:04d}_{j:02d}"
            save_png(unit[i * args.n_per_prompt + j], out / "images" / f"{stem}.png")
            if caption:  # beside the PNG: nar eval-samples reads it as the sample's prompt
                (out / "images" / f"{stem}.txt").write_text(f"{cond}\n")
            records.append({"file": f"images/{stem}.png", "prompt" if caption else "class": cond})
    grid = save_png(image_grid(unit, nrow=args.n_per_prompt if len(conditions) > 1 else None), out / "grid.png")
    (out / "samples.json").write_text(json.dumps(
        {"ckpt": str(args.ckpt), "tokenizer": str(tok_path), "sampling": vars(sampling), "seed": args.seed,
         "samples": records}, indent=1))
    print(f"{len(records)} samples in {out} (grid: {grid})")
    return 0
