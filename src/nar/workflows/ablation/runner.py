"""Run an ablation grid: the shared data/tokenizer once, then each variant trained, scored and timed the
same way, one complete row of ``results.csv`` at a time (a finished row is never redone)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nar.config import load_config
from nar.errors import ConfigError
from nar.runs.config import TrainConfig
from nar.workflows.ablation.config import AblationConfig, BenchConfig, VariantConfig, variant_overrides
from nar.workflows.ablation.report import (
    log_hparams,
    plot_score_vs_speed,
    read_rows,
    write_markdown,
    write_rows,
)

log = logging.getLogger(__name__)

SCORE_KEYS = ("val/fid", "val/fvd", "val/fvd_proxy_inception")


def build_train_configs(cfg: AblationConfig, shared: Sequence[str] = ()) -> list[tuple[VariantConfig, Any]]:
    """Each variant's :class:`~nar.runs.TrainConfig`: base YAMLs <- the ablation's overrides <-
    ``shared`` (data paths, devices, command line) <- the variant's ``model.*``. Validates every variant
    before anything runs; errors name the variant and the key."""
    runs_root = cfg.out_dir / "runs"
    out = []
    for i, variant in enumerate(cfg.variants):
        overrides = [*cfg.overrides, *shared, f"name={variant.name}", f"runs_root={runs_root}",
                     *variant_overrides(variant)]
        try:
            out.append((variant, load_config(TrainConfig, cfg.base, overrides)))
        except ConfigError as err:
            raise ConfigError(f"variants[{i}] ({variant.name}): {err}") from None
    return out


def fingerprint(train_cfg: Any) -> str:
    """A hash of everything that decides a row's numbers. Head settings that build the same network
    (e.g. a shared head's unused ``head_blocks`` entries, chain vs parallel with one branch) hash equal."""
    data = dataclasses.asdict(train_cfg)
    for key in ("name", "runs_root"):
        data.pop(key)
    data["trainer"].pop("threads", None)
    m = data["model"]
    m.pop("preset", None)  # informational: the fields decide
    blocks = train_cfg.model.blocks_per_axis
    m["head_blocks"] = blocks
    if m["mode"] == "nar" and m["head_sharing"] == "shared":
        m["head_blocks"], m["shared_axis"] = [blocks[m["shared_axis"]]], 0
    if m["mode"] in ("raster", "par"):  # one head, one parent: sharing and mixing change nothing
        m.update(head_sharing="per_axis", shared_axis=-1, mixing="logits")
    if sum(b > 0 for b in m["head_blocks"]) <= 1:
        m["head_layout"] = "chain"  # one branch at most: chain and parallel are the same network
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def prepare_shared(cfg: AblationConfig, threads: int) -> list[str]:
    """Embedded data -> tokenizer -> token shards for ``prepare.domain`` (``nar demo``'s steps, each skipped when
    its output exists), as ``key=value`` overrides shared by every variant; [] without a domain."""
    p = cfg.prepare
    if not p.domain:
        return []
    from nar.data.shards import read_meta
    from nar.workflows.demo import ensure_embedded, ensure_tokenizer, ensure_tokens

    images = ensure_embedded(p.domain, Path(p.data), p.smoke)
    tok_dir = Path(p.tokenizer_dir) if p.tokenizer_dir else cfg.out_dir / "tokenizer"
    tokenizer = ensure_tokenizer(p.domain, images, tok_dir, p.smoke, threads)
    # Tokens live beside the tokenizer that made them, so a grid reusing `make demo`'s tokenizer reuses its tokens.
    tokens = ensure_tokens(images, tokenizer, tok_dir.parent / "tokens")
    meta = read_meta(tokens)
    return [f"data.root={tokens}", f"tokenizer.path={tokenizer}", f"eval.real_root={images}",
            f"model.grid=[{','.join(map(str, meta['grid']))}]", f"model.vocab_size={meta['codebook_size']}",
            f"model.num_classes={len(meta['classes'])}"]


def measure_images_per_s(model: Any, train_cfg: Any, bench: BenchConfig) -> float | None:
    """Images/s of token generation with :class:`~nar.sampling.fast.FastSampler` (the sampling settings of the
    run, CFG included; no pixel decoding; ``bench.weights``) at ``bench.batch``, best of ``bench.iters`` calls after
    ``bench.warmup``; None for caption models or when disabled."""
    if not bench.enabled or model.cfg.condition != "class":
        return None
    import torch

    from nar.sampling.bench import time_call
    from nar.sampling.fast import FastSampler

    device = next(model.parameters()).device
    if bench.weights == "random":
        from nar.sampling.bench import random_model

        model = random_model(model.cfg, device, next(model.parameters()).dtype, seed=train_cfg.trainer.seed)
    sampler = FastSampler(model, bench.batch, train_cfg.sampling)
    labels = torch.arange(bench.batch, device=device) % model.cfg.num_classes
    gen = torch.Generator(device=device).manual_seed(train_cfg.trainer.seed)
    for _ in range(bench.warmup):
        sampler(labels, generator=gen)
    # Best of `iters` single calls: on a shared machine the fastest call is the least disturbed one.
    seconds = min(time_call(lambda: sampler(labels, generator=gen), device, 0, 1, 0.0) for _ in range(bench.iters))
    return bench.batch / seconds


def run_variant(variant: VariantConfig, train_cfg: Any, bench: BenchConfig) -> dict[str, Any] | None:
    """Train (resuming its own ``last.ckpt`` if a previous attempt was interrupted), score and time one
    variant; its row, or None on ranks other than 0."""
    from nar.lightning.logs import read_metrics
    from nar.runs.folder import has_checkpoints
    from nar.workflows.train import fit

    start = time.perf_counter()
    result = fit(train_cfg, resume=has_checkpoints(train_cfg.run_dir), enable_progress_bar=False)
    seconds = time.perf_counter() - start
    if not result["trainer"].is_global_zero:
        return None
    # A run that had already finished validates no more: its last validation is in metrics.jsonl.
    history = read_metrics(train_cfg.run_dir)
    scores = {**(history[-1] if history else {}), **result["metrics"]}
    score_key = next((k for k in SCORE_KEYS if k in scores), None)
    model = result["module"].eval_model
    m = train_cfg.model
    return {
        "variant": variant.name, "label": variant.label, "mode": m.mode, "head_sharing": m.head_sharing,
        "shared_axis": m.shared_axis, "head_blocks": json.dumps(m.blocks_per_axis), "head_layout": m.head_layout,
        "regions": json.dumps(list(m.regions)) if m.regions else "",
        "mixing": m.mixing, "score_name": score_key[4:] if score_key else "",
        "score": scores[score_key] if score_key else None, "paper_score": variant.paper_score,
        "val_loss": scores.get("val/loss"), "forward_passes": int(model.num_passes),
        "images_per_s": measure_images_per_s(model, train_cfg, bench), "parameters": int(model.num_parameters()),
        "steps": int(result["global_step"]), "train_seconds": seconds, "same_as": "",
    }


def run_ablation(cfg: AblationConfig, shared: Sequence[str] = (), only: Sequence[str] | None = None,
                 threads: int | None = None) -> dict[str, Any]:
    """Run every variant of ``cfg`` not yet in ``<out>/results.csv``; returns ``{"rows", "csv", "markdown",
    "plot", "tensorboard", "ran", "skipped"}``.

    ``shared``: extra ``key=value`` overrides for every variant (devices, budget); ``only``: variant names
    to run (the others keep their rows).
    """
    # Fail on a bad variant before spending minutes on the tokenizer.
    base_threads = build_train_configs(cfg, shared)[0][1].trainer.threads
    if only:
        unknown = sorted(set(only) - {v.name for v in cfg.variants})
        if unknown:
            raise ConfigError(f"--only: unknown variant(s) {unknown}; known: {[v.name for v in cfg.variants]}")
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepare_shared(cfg, threads or base_threads or 2)
    configs = build_train_configs(cfg, [*prepared, *shared])
    csv_path, md_path, png_path, tb_dir = out / "results.csv", out / "results.md", out / "fid_vs_speed.png", out / "tb"
    order = {v.name: i for i, v in enumerate(cfg.variants)}
    rows = read_rows(csv_path)
    # Decided from names and configs only (never from rows written during this run), so that every DDP
    # rank takes the same branch for every variant.
    completed = {r["variant"] for r in rows}
    earlier_fp = {r["fingerprint"]: r["variant"] for r in reversed(rows)}
    first_of: dict[str, str] = {}
    ran, skipped = [], []
    for variant, train_cfg in configs:
        fp = fingerprint(train_cfg)
        twin_name = first_of.setdefault(fp, variant.name)
        if only and variant.name not in only:
            continue
        done = next((r for r in rows if r["variant"] == variant.name), None)
        if done is not None:
            if done["fingerprint"] != fp:
                raise ConfigError(f"variant '{variant.name}': {csv_path} holds a row made with another configuration "
                                  f"(fingerprint {done['fingerprint']} != {fp}); delete that row or pick another out=")
            log.info("%s: done (%s), skipped", variant.name, csv_path)
            skipped.append(variant.name)
            continue
        if twin_name == variant.name or twin_name not in completed:
            twin_name = earlier_fp.get(fp, "")
        if twin_name and twin_name != variant.name:  # the same network and budget already ran: same numbers
            completed.add(variant.name)
            twin = next((r for r in rows if r["variant"] == twin_name), None)
            if twin is None:  # not rank 0: rank 0 writes the results
                continue
            log.info("%s: the same network as %s; its row is reused", variant.name, twin["variant"])
            row = {**twin, "variant": variant.name, "label": variant.label, "paper_score": variant.paper_score,
                   "head_sharing": train_cfg.model.head_sharing, "shared_axis": train_cfg.model.shared_axis,
                   "head_blocks": json.dumps(train_cfg.model.blocks_per_axis),
                   "head_layout": train_cfg.model.head_layout, "same_as": twin["variant"]}
        else:
            log.info("%s: training %s", variant.name, " ".join(variant_overrides(variant)) or "(base config)")
            row = run_variant(variant, train_cfg, cfg.bench)
            completed.add(variant.name)
            if row is None:  # not rank 0: rank 0 writes the results
                continue
        row["fingerprint"] = fp
        rows.append(row)
        rows.sort(key=lambda r: order.get(r["variant"], len(order)))
        write_rows(csv_path, rows)  # the row exists only once complete
        write_markdown(md_path, rows, title=cfg.name)
        log_hparams(tb_dir, row)
        plot_score_vs_speed(png_path, rows)
        ran.append(variant.name)
    if rows and not md_path.is_file():
        write_markdown(md_path, rows, title=cfg.name)
    return {"rows": rows, "csv": csv_path, "markdown": md_path,
            "plot": png_path if png_path.is_file() else None, "tensorboard": tb_dir, "ran": ran, "skipped": skipped}
