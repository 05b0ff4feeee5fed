"""The demo pipeline (``nar demo``): from a fresh install to samples and an FID on the CPU, in minutes.

Steps (each skipped when its output already exists, so a second run resumes):
1. embedded shards ``<data>/<domain>`` (:func:`nar.data.embedded.build_embedded`);
2. a tiny VQ tokenizer (:func:`nar.workflows.tokenizer.train_tokenizer` with the packaged
   ``tokenizers/<domain>.yaml``);
3. token shards (:func:`nar.data.tokens.extract_tokens`);
4. a tiny NAR (the packaged ``demo/<domain>.yaml``) trained with validation by frontier decoding;
5. FID (video: the Inception FVD proxy) of the EMA weights against the held-out real samples,
   a PNG sample grid and TensorBoard logs, whose paths are printed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from nar.atomic import write_text
from nar.config import load_config
from nar.errors import ConfigError
from nar.runs.config import TrainConfig

log = logging.getLogger(__name__)

DOMAINS = ("emoji", "atari", "shapes-t2i", "emoji-t2i")
# Text-to-image demos: embedded source (built under <out>/data), its builder options, the tokenizer recipe
# (`nar train-tokenizer --data ...`) and the generator YAML under experiments/t2i/.
T2I: dict[str, dict[str, Any]] = {
    "shapes-t2i": {"source": "shapes", "options": {"size": 32, "num_train": 5000, "num_val": 500},
                   "smoke_options": {"size": 32, "num_train": 160, "num_val": 32},
                   "tokenizer": "emoji", "config": "t2i/shapes"},
    "emoji-t2i": {"source": "emoji", "options": {"size": 32}, "smoke_options": {"size": 32, "limit": 300},
                  "tokenizer": "emoji", "config": "t2i/emoji"},
}

# Budgets per mode: tokenizer steps, generator steps, embedded-data options.
BUDGETS: dict[str, dict[str, Any]] = {
    "emoji": {"tokenizer_steps": 800, "tokenizer_batch": 16, "smoke_tokenizer_steps": 4, "smoke_limit": 300},
    "atari": {"tokenizer_steps": 150, "tokenizer_batch": 4, "smoke_tokenizer_steps": 4, "smoke_limit": None},
    "emoji-t2i": {"tokenizer_steps": 300, "tokenizer_batch": 16, "smoke_tokenizer_steps": 4, "smoke_limit": None},
    "shapes-t2i": {"tokenizer_steps": 1200, "tokenizer_batch": 16, "smoke_tokenizer_steps": 4, "smoke_limit": None},
}


def run_demo(domain: str = "emoji", smoke: bool = False, compare_raster: bool = False, out: str | None = None,
             data: str | None = None, threads: int = 2, overrides: list[str] | tuple[str, ...] = (),
             tokenizer_steps: int | None = None) -> dict[str, Any]:
    """Run the demo; returns ``{"runs": {mode: {...}}, "ceiling", "tokenizer", "tokens", "seconds", ...}``.

    ``tokenizer_steps`` replaces the domain's tokenizer budget (:data:`BUDGETS`); ``overrides`` change the
    generator's config (``trainer.max_steps=...``, ``eval.num_samples=...``): the demo's budget split.
    """
    import torch

    if threads < 0:
        raise ConfigError(f"--threads must be >= 0 (0 = torch's default), got {threads}")
    if tokenizer_steps is not None and tokenizer_steps < 1:
        raise ConfigError(f"--tokenizer-steps must be >= 1 (leave it out for the domain's budget), "
                          f"got {tokenizer_steps}")
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    suffix = "-smoke" if smoke else ""
    # Absolute: the runs store these paths (tokenizer.path, data.root, eval.real_root) and are read from anywhere.
    out_dir = Path(os.path.abspath(out or Path("runs") / f"demo-{domain}{suffix}"))
    out_dir.mkdir(parents=True, exist_ok=True)
    data_root = Path(os.path.abspath(data or Path("data") / "embedded"))
    timings: dict[str, float] = {}

    t = time.perf_counter()
    # Without --data, t2i domains (their own scene count and size, so data/embedded/shapes stays the default one)
    # and the smoke budget (its own small shards) build their data under the demo folder.
    if not data and (domain in T2I or smoke):
        data_root = out_dir / "data"
    images = ensure_embedded(domain, data_root, smoke)
    timings["data"] = time.perf_counter() - t

    t = time.perf_counter()
    tokenizer_path = ensure_tokenizer(domain, images, out_dir / "tokenizer", smoke, threads, tokenizer_steps)
    timings["tokenizer"] = time.perf_counter() - t

    t = time.perf_counter()
    tokens = ensure_tokens(images, tokenizer_path, out_dir / "tokens", text=_text_settings(domain))
    timings["tokens"] = time.perf_counter() - t

    runs = {}
    modes = ["nar", "raster"] if compare_raster else ["nar"]
    for mode in modes:
        t = time.perf_counter()
        runs[mode] = train_generator(domain, mode, tokens, images, tokenizer_path, out_dir, smoke, threads, overrides)
        timings[f"generator_{mode}"] = time.perf_counter() - t

    t = time.perf_counter()
    cfg = generator_config(domain, "nar", tokens, images, tokenizer_path, out_dir, smoke, threads, overrides)
    ceiling = tokenizer_ceiling(cfg, out_dir / "tokenizer" / "ceiling.json")
    timings["ceiling"] = time.perf_counter() - t
    result = {"domain": domain, "smoke": smoke, "out": str(out_dir), "data": str(images),
              "tokenizer": str(tokenizer_path), "tokens": str(tokens), "runs": runs, "ceiling": ceiling,
              "timings": timings, "seconds": time.perf_counter() - start}
    write_text(out_dir / "demo_result.json", json.dumps(result, indent=1, default=str))
    return result


# ------------------------------------------------------------------------------------------ steps
def ensure_embedded(domain: str, data_root: Path, smoke: bool) -> Path:
    """``<data_root>/<domain>`` with train/val shards (built by nar.data.embedded when missing)."""
    from nar.data.embedded import build_embedded

    if domain in T2I:
        source = T2I[domain]["source"]
        folder = data_root / source
        if not (folder / "meta.json").is_file():
            build_embedded(data_root, only=[source],
                           options={source: T2I[domain]["smoke_options" if smoke else "options"]})
        return folder
    folder = data_root / domain
    if (folder / "meta.json").is_file():
        log.info("embedded %s: %s (exists)", domain, folder)
        return folder
    options: dict[str, Any] = {}
    if smoke and domain == "emoji":
        options = {"emoji": {"limit": BUDGETS["emoji"]["smoke_limit"]}}
    if domain == "atari":
        from nar.tokenizers import VQConfig

        tok = VQConfig.from_name("vq-video-tiny-atari")  # clips shaped like the tiny video tokenizer's input
        options = {"atari": {"frames": tok.num_frames, "size": tok.image_size}}
        if smoke:
            options["atari"].update(clips_per_game=4, val_clips_per_game=2)
    build_embedded(data_root, only=[domain], options=options)
    return folder


def ensure_tokenizer(domain: str, images: Path, out: Path, smoke: bool, threads: int,
                     steps: int | None = None) -> Path:
    """Train the domain's tiny tokenizer with ``nar train-tokenizer``'s code path; returns ``tokenizer.pt``."""
    path = out / "tokenizer.pt"
    if path.is_file():
        log.info("tokenizer: %s (exists)", path)
        return path
    from nar.workflows.tokenizer import tokenizer_config, train_tokenizer

    b = BUDGETS[domain]
    if steps is not None and steps < 1:  # 0 is not "the default": it would train nothing
        raise ConfigError(f"tokenizer steps (--tokenizer-steps, prepare.tokenizer_steps) must be >= 1, got {steps}")
    steps = steps if steps is not None else b["smoke_tokenizer_steps"] if smoke else b["tokenizer_steps"]
    # CPU budget: small batches, one validation at the end, no rFID (the generator's FID follows).
    overrides = [f"runs_root={out.parent}", f"name={out.name}", f"trainer.max_steps={steps}",
                 f"trainer.val_every={steps}", f"trainer.ckpt_every={steps}", f"trainer.threads={threads}",
                 "trainer.accelerator=cpu", "data.num_workers=0", f"data.batch_size={b['tokenizer_batch']}",
                 "val.rfid=false", f"optim.warmup_steps={min(50, steps // 4)}"]
    overrides += ["data.limit_val_samples=8", "data.batch_size=8", "data.eval_batch_size=8"] if smoke else \
        [f"data.limit_val_samples={2 * 64}"]
    cfg = tokenizer_config(T2I[domain]["tokenizer"] if domain in T2I else domain, overrides=overrides,
                           root=str(images))
    from nar.runs.folder import has_checkpoints

    # A run stopped (or killed before tokenizer.pt) goes on from its checkpoint, as the generator step does.
    train_tokenizer(cfg, resume=has_checkpoints(cfg.run_dir), enable_progress_bar=False)
    if not path.is_file():
        raise RuntimeError(f"tokenizer training finished without writing {path}")
    return path


def ensure_tokens(images: Path, tokenizer_path: Path, out: Path, text: Any = None) -> Path:
    """Token shards of every split of ``images`` (:func:`nar.data.tokens.extract_tokens`, no augmentation);
    with ``text`` = ``(TextEncoderConfig, NARConfig)`` the captions' features are stored too."""
    if (out / "meta.json").is_file():
        log.info("tokens: %s (exists)", out)
        return out
    from nar.data.tokens import extract_tokens
    from nar.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_path))
    text_encoder = None
    if text is not None:
        from nar.text import build_text_encoder

        text_encoder = build_text_encoder(*text)
    extract_tokens(images, out, tokenizer, image_size=tokenizer.config.image_size, flip=False, batch_size=64,
                   tokenizer_name=str(tokenizer_path), text_encoder=text_encoder)
    return out


def _text_settings(domain: str) -> Any:
    """``(TextEncoderConfig, NARConfig)`` of a text-to-image demo's YAML (None for class-conditional demos)."""
    if domain not in T2I:
        return None
    cfg = load_config(TrainConfig, [f"{T2I[domain]['config']}.yaml"])
    return cfg.text, cfg.model


def generator_config(domain: str, mode: str, tokens: Path, images: Path, tokenizer_path: Path, out_dir: Path,
                     smoke: bool, threads: int, overrides: list[str] | tuple[str, ...] = ()):
    """The generator config of the demo: the packaged ``demo/<domain>.yaml`` (+ ``_smoke.yaml``) + data paths;
    grid, vocabulary and classes come from the token shards (:func:`nar.workflows.train.generator_config`)."""
    from nar.workflows.train import generator_config as run_config

    stem = T2I[domain]["config"] if domain in T2I else f"demo/{domain}"
    yamls = [f"{stem}.yaml"] + ([f"{stem}_smoke.yaml"] if smoke else [])
    base = [f"name={mode}", f"runs_root={out_dir}", f"data.root={tokens}", f"tokenizer.path={tokenizer_path}",
            f"eval.real_root={images}", f"model.mode={mode}", f"trainer.threads={threads}"]
    return run_config(yamls, [*base, *overrides])


def train_generator(domain: str, mode: str, tokens: Path, images: Path, tokenizer_path: Path, out_dir: Path,
                    smoke: bool, threads: int, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    from nar.runs.folder import has_checkpoints
    from nar.workflows.ablation.runner import fingerprint
    from nar.workflows.train import fit

    cfg = generator_config(domain, mode, tokens, images, tokenizer_path, out_dir, smoke, threads, overrides)
    done = cfg.run_dir / "result.json"
    fp = fingerprint(cfg)  # as a grid's rows: name, run folder and CPU threads left out
    summary = finished_generator(done, cfg, fp, earlier=fingerprint(with_paths_as_before(cfg)))
    if summary is not None:
        return summary
    # Another config (e.g. trainer.max_steps=...) continues from the run's checkpoint; a differently shaped network
    # is refused by fit, naming the keys.
    result = fit(cfg, resume=has_checkpoints(cfg.run_dir), enable_progress_bar=False)
    steps, asked = result["global_step"], cfg.trainer.max_steps
    if steps > asked:  # a shorter budget resumes a checkpoint already past it: no step is undone
        log.warning("%s generator: asked for %d steps, but %s holds a run already trained for %d steps; its scores "
                    "and samples are the %d-step model's (give another --out to train %d steps from scratch)", mode,
                    asked, cfg.run_dir, steps, steps, asked)
    scores = {k: v for k, v in result["metrics"].items() if k.startswith("val/")}
    summary = {"mode": mode, "run_dir": str(result["run_dir"]), "checkpoint": str(result["checkpoint"]),
               "samples": str(result["samples"]) if result["samples"] else None,
               "tensorboard": str(result["run_dir"] / "tb"), "steps": steps, "asked_steps": asked,
               "passes": int(result["module"].model.num_passes), "cells": cfg.model.num_cells, "scores": scores,
               "fingerprint": fp}
    write_text(done, json.dumps(summary, indent=1))
    return summary


def with_paths_as_before(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its data, tokenizer and real-sample paths relative to the working directory, as the demo stored
    them before they were absolute: the config whose fingerprint an older run's marker holds."""
    def rel(path: str) -> str:
        return os.path.relpath(path) if path and os.path.isabs(path) else path

    return replace(cfg, data=replace(cfg.data, root=rel(cfg.data.root)),
                   tokenizer=replace(cfg.tokenizer, path=rel(cfg.tokenizer.path)),
                   eval=replace(cfg.eval, real_root=rel(cfg.eval.real_root)))


def finished_generator(marker: Path, cfg: TrainConfig, fp: str, earlier: str | None = None) -> dict[str, Any] | None:
    """The summary in ``marker`` (``<run>/result.json``) when it is a finished run of ``cfg`` (config fingerprint
    ``fp``, or ``earlier``: the same config as an older demo stored it, with relative paths, whose marker is then
    brought up to ``fp``); None to train (resume) the run instead.

    A marker written before markers had a fingerprint is reused when its mode and steps are the config's (the
    budget is what a rerun changes; retraining would cost a validation at least, and its checkpoint may be gone),
    with a warning; otherwise the run trains again."""
    mode = cfg.model.mode
    if not marker.is_file():
        return None
    try:
        summary = json.loads(marker.read_text())
    except (OSError, ValueError) as err:  # e.g. torn by a crash before atomic writes: train (resume) again
        log.warning("%s generator: unreadable %s (%s); training again", mode, marker, err)
        return None
    stored = summary.get("fingerprint")
    if stored == fp:
        log.info("%s generator: %s (exists)", mode, marker)
        return summary
    if earlier is not None and stored == earlier:
        log.info("%s generator: %s (exists; made when the demo stored relative paths)", mode, marker)
        summary = {**summary, "fingerprint": fp}
        write_text(marker, json.dumps(summary, indent=1))
        return summary
    if stored is None and summary.get("mode") == mode and summary.get("steps") == cfg.trainer.max_steps:
        log.warning("%s generator: %s has no config fingerprint (an older nar wrote it); reused since its mode and "
                    "%d steps match; delete it to train with the current config", mode, marker, cfg.trainer.max_steps)
        return summary
    log.info("%s generator: %s was made with another config (fingerprint %s, now %s); training again from the "
             "run's checkpoint", mode, marker, stored or "none", fp)
    return None


def tokenizer_ceiling(cfg: Any, cache: Path) -> dict[str, Any]:
    """The score a perfect generator would get: the tokenizer's reconstructions of training tokens against the
    same real samples the generator is scored against, same count and metric (cached beside the tokenizer).

    A generator that reproduced the training token distribution exactly would score this, so the gap between
    the demo's FID and this number is what more generator training can still win."""
    key = {"metrics": list(cfg.eval.metrics), "n": cfg.eval.num_real or cfg.eval.num_samples,
           "real": cfg.eval.real_root, "split": cfg.eval.real_split, "tokens": cfg.data.root,
           "real_seed": cfg.eval.real_seed}  # the real samples: a random subset of the split when n is below it
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return stored["scores"]
    import torch

    from nar.data.datamodules import datamodule_for
    from nar.lightning.generation import to_uint8
    from nar.metrics.registry import build_metrics
    from nar.metrics.sources import iter_batches, iter_records
    from nar.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(cfg.tokenizer.path)
    video = len(cfg.model.grid) == 3
    e = cfg.eval
    metrics = build_metrics(e.metrics, video=video, inception_weights=e.inception_weights, i3d_path=e.i3d_path,
                            have_real=True)
    n = key["n"]
    for pixels, _ in iter_batches(iter_records(e.real_root, e.real_split, n, image_size=tokenizer.config.image_size,
                                               seed=e.real_seed), e.batch_size):
        for m in metrics.values():
            m.update(pixels, real=True)
    seen = 0
    loader = datamodule_for(cfg.data.root, num_workers=0, eval_batch_size=e.batch_size, val_split="train",
                            batch_size=e.batch_size).val_dataloader()
    with torch.no_grad():
        for batch in loader:
            pixels = to_uint8(tokenizer.decode(batch["tokens"][: n - seen]).clamp(-1, 1))
            for m in metrics.values():
                m.update(pixels, real=False)
            seen += pixels.shape[0]
            if seen >= n:
                break
    scores = {k: float(v) for m in metrics.values() for k, v in m.compute().items()}
    scores["samples"] = seen
    from nar.atomic import write_text

    write_text(cache, json.dumps({"key": key, "scores": scores}, indent=1))
    return scores


def format_report(result: dict[str, Any]) -> str:
    lines = [f"demo ({result['domain']}{', smoke' if result['smoke'] else ''}) finished in "
             f"{result['seconds'] / 60:.1f} min",
             f"  data:       {result['data']}", f"  tokenizer:  {result['tokenizer']}", f"  tokens:     {result['tokens']}"]
    for mode, run in result["runs"].items():
        scores = run["scores"]
        fid = scores.get("val/fid", scores.get("val/fvd", scores.get("val/fvd_proxy_inception")))
        name = next((k[4:] for k in ("val/fid", "val/fvd", "val/fvd_proxy_inception") if k in scores), "score")
        text = {k[4:]: v for k, v in scores.items() if k.startswith("val/geneval_")}
        ceiling = (result.get("ceiling") or {}).get(name)
        bits = scores.get("val/bits_per_token")
        asked = run.get("asked_steps")  # markers written before it have none
        past = f" (asked for {asked}: the run folder held a longer run)" if asked is not None and asked < run["steps"] \
            else ""
        lines += [f"  [{mode}] {run['steps']} steps{past}, {run['passes']} forward passes per sample",
                  (f"    {name}: {fid:.2f}" + (f"   (tokenizer ceiling: {ceiling:.2f}, its reconstructions of "
                                                  f"training images)" if ceiling is not None else ""))
                  if fid is not None else "    (no fidelity score)",
                  *([f"    bits/token: {bits:.4f} (exact likelihood of the val tokens, "
                     f"{bits * run.get('cells', 0):.0f} bits per sample)"] if bits is not None else []),
                  *(["    text alignment: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(text.items()))] if text else []),
                  f"    samples:     {run['samples']}",
                  f"    checkpoint:  {run['checkpoint']}",
                  f"    tensorboard: tensorboard --logdir {run['tensorboard']}"]
    if "nar" in result["runs"] and "raster" in result["runs"]:
        a, b = result["runs"]["nar"]["scores"], result["runs"]["raster"]["scores"]
        key = "val/fid" if "val/fid" in a else next((k for k in a if k.startswith("val/fvd")), None)
        if key and key in b:
            ratio = a[key] / b[key]
            speed = result["runs"]["raster"]["passes"] / result["runs"]["nar"]["passes"]
            lines.append(f"  NAR / raster {key[4:]}: {a[key]:.2f} / {b[key]:.2f} = {ratio:.3f} "
                         f"({'within' if ratio <= 1.15 else 'NOT within'} 15%); {speed:.1f}x fewer forward passes")
    return "\n".join(lines)
