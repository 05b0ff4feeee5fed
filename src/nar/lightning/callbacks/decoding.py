"""Frontier-decoding validation: :class:`FrontierDecodingCallback`: samples a fixed set of conditions with the fast
sampler, decodes them to pixels, logs an image grid (videos: an animated GIF and a frames grid) and a
PNG under ``<run>/samples/``, logs forward passes and images/s, and feeds generated and real samples to
torchmetrics (FID and friends for images, FVD or its named proxy for videos) whose sufficient
statistics are summed across ranks, so the scores are exact under DDP.

Which samples a rank generates depends only on the sample index: the fixed condition list is cut
into chunks of ``eval.batch_size``, chunk ``c`` goes to rank ``c % world`` and is sampled with seed
``eval.seed + c``. A 2-process run therefore generates the same samples as a 1-process run.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

import lightning as L
from nar.metrics.registry import build_metrics
from nar.metrics.sources import iter_batches, iter_records
from nar.model import NARModel
from nar.pictures import add_gif, sample_grid, save_png, to_unit
from nar.runs.config import TrainConfig
from nar.sampling import make_sampler

log = logging.getLogger(__name__)


def condition_list(model: NARModel, num_samples: int) -> torch.Tensor:
    """The fixed class ids ``[num_samples]`` validation samples: round-robin over the classes."""
    return torch.arange(num_samples) % model.cfg.num_classes


class FrontierDecodingCallback(Callback):
    """Generates, decodes, logs and scores samples at the end of every validation (see module docstring).

    Logged (all ranks agree): ``val/fid`` (and ``val/precision``, ``val/recall``, ``val/is_mean`` when
    asked) or ``val/fvd`` / ``val/fvd_proxy_inception``; caption models with ``text`` in ``eval.metrics``:
    ``val/geneval_overall`` and ``val/geneval_<family>`` (shapes captions; the grid's prompts go to
    ``samples/step_*.txt``); ``val/forward_passes`` (per image),
    ``val/images_per_sec`` (token generation, this rank), ``val/decode_images_per_sec``.
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path) -> None:
        super().__init__()
        self.cfg = cfg
        self.eval = cfg.eval
        self.run_dir = Path(run_dir)
        self.metrics: dict[str, Any] | None = None
        self._real_done = False
        self._val_tokens: list[torch.Tensor] = []
        self._val_captions: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._val_texts: list[str] = []  # the captions of _val_captions, for the text-alignment metric
        self.text_metric: Any = None
        self.last_results: dict[str, float] = {}
        self.last_grid: Path | None = None

    # ------------------------------------------------------------------------------ collection
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_tokens, self._val_captions, self._val_texts = [], [], []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        if not self._real_done and not self.eval.real_root and not self.eval.reference_stats and "tokens" in batch:
            self._val_tokens.append(batch["tokens"].detach())
        if pl_module.cfg.model.condition == "caption" and "capfeat" in batch:
            self._val_captions.append((batch["capfeat"].detach(), batch.get("capmask")))
            self._val_texts.extend(batch.get("caption") or [""] * batch["capfeat"].shape[0])

    # ------------------------------------------------------------------------------ the work
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.run(trainer, pl_module)

    @torch.no_grad()
    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        model: NARModel = pl_module.eval_model
        tokenizer = pl_module.tokenizer
        device = pl_module.device
        rank, world = trainer.global_rank, trainer.world_size
        video = len(model.cfg.grid) == 3
        was_training = model.training
        model.eval()
        if self.metrics is None:
            e = self.eval
            self.metrics = build_metrics(e.metrics, video=video, inception_weights=e.inception_weights,
                                         i3d_path=e.i3d_path, reference_stats=e.reference_stats,
                                         have_real=bool(e.real_root)) if tokenizer is not None else {}
            if self.eval.compile_decoder and tokenizer is not None and device.type == "cuda":
                tokenizer.decoder.compile()  # in place, once; the first decode compiles
        for m in self.metrics.values():
            m.to(device)

        # 1. generate this rank's chunks of the fixed condition list
        n = self.eval.num_samples
        bs = self.eval.batch_size
        conds, masks = self._conditions(model, n, device)
        n = conds.shape[0]
        chunks = [c for c in range(math.ceil(n / bs)) if c % world == rank]
        tokens_all, gen_seconds = [], 0.0
        # One sampler (and one generator, re-seeded per chunk) per batch size: on a GPU the fast sampler
        # captures its CUDA graph once instead of once per chunk. Caption masks differ per chunk: no reuse.
        samplers: dict[int, tuple[Any, torch.Generator]] = {}
        for c in chunks:
            cond = conds[c * bs:(c + 1) * bs]
            mask = masks[c * bs:(c + 1) * bs] if masks is not None else None
            if mask is not None or cond.shape[0] not in samplers:
                samplers[cond.shape[0]] = (make_sampler(model, cond.shape[0], self.cfg.sampling, cond_mask=mask),
                                           torch.Generator(device=device))
            sampler, generator = samplers[cond.shape[0]]
            generator.manual_seed(self.eval.seed + c)
            _sync(device)
            start = time.perf_counter()
            tokens_all.append(sampler(cond, generator=generator))
            _sync(device)
            gen_seconds += time.perf_counter() - start
        n_local = sum(t.shape[0] for t in tokens_all)
        results: dict[str, float] = {"val/forward_passes": float(model.num_passes)}
        if n_local:
            results["val/images_per_sec"] = n_local / max(gen_seconds, 1e-9)

        # 2. decode and score
        samples: list[torch.Tensor] = []
        if tokenizer is not None:
            start = time.perf_counter()
            text = self._text_metric(model, device)
            for c, t in zip(chunks, tokens_all):
                pixels = tokenizer.decode(t.to(device)).float().clamp(-1, 1)
                samples.append(pixels)
                for m in self.metrics.values():
                    m.update(pixels, real=False)
                if text is not None:
                    self._update_text(text, pixels, c * bs)
            _sync(device)
            if n_local:
                results["val/decode_images_per_sec"] = n_local / max(time.perf_counter() - start, 1e-9)
            if not self._real_done:
                self._update_real(trainer, pl_module, tokenizer, video)
            for m in self.metrics.values():
                for key, value in m.compute().items():
                    results[f"val/{key}"] = float(value)
                m.reset()
            if text is not None:
                for key, value in text.compute().items():
                    results[f"val/{key}"] = float(value)
                text.reset()

        # 3. log scalars and pictures
        for key, value in results.items():
            pl_module.log(key, value, rank_zero_only=False, sync_dist=False)
        if trainer.is_global_zero:
            self._log_pictures(trainer, samples, tokens_all, video)
        model.train(was_training)
        self.last_results = results
        if trainer.is_global_zero:
            log.info("step %d: %s", trainer.global_step, ", ".join(f"{k}={v:.4g}" for k, v in sorted(results.items())))
        return results

    def _conditions(self, model: NARModel, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        if model.cfg.condition == "class":
            return condition_list(model, n).to(device), None
        if not self._val_captions:
            raise RuntimeError("caption-conditioned validation needs caption features in the val batches")
        feats = torch.cat([f for f, _ in self._val_captions])[:n].to(device)
        masks = [m for _, m in self._val_captions]
        mask = torch.cat(masks)[:n].to(device) if all(m is not None for m in masks) else None
        return feats, mask

    def _text_metric(self, model: NARModel, device: torch.device):
        """GenEval-style text alignment (``eval.metrics`` has ``text``; caption models on shapes captions)."""
        if "text" not in self.eval.metrics or model.cfg.condition != "caption":
            return None
        if self.text_metric is None:
            from nar.metrics import GenEvalShapes

            self.text_metric = GenEvalShapes()
        return self.text_metric.to(device)

    def _update_text(self, metric: Any, pixels: torch.Tensor, first: int) -> None:
        """Score samples ``first …`` against the GenEval specs parsed from their captions (others skipped)."""
        from nar.shapes import parse_prompt

        keep, specs = [], []
        for i, caption in enumerate(self._val_texts[first:first + pixels.shape[0]]):
            try:
                specs.append(parse_prompt(caption))
                keep.append(i)
            except ValueError:  # not a shapes prompt (ConfigError is a ValueError)
                continue
        if keep:
            metric.update(pixels[keep], specs)

    def _update_real(self, trainer: L.Trainer, pl_module: L.LightningModule, tokenizer: Any, video: bool) -> None:
        if not self.metrics or self.eval.reference_stats:
            self._real_done = True
            return
        device = pl_module.device
        if self.eval.real_root:
            e = self.eval
            size = getattr(getattr(tokenizer, "config", None), "image_size", None)
            records = iter_records(e.real_root, e.real_split, e.num_real or e.num_samples, image_size=size,
                                   rank=trainer.global_rank, world_size=trainer.world_size)
            for pixels, _ in iter_batches(records, e.batch_size):
                for m in self.metrics.values():
                    m.update(pixels.to(device), real=True)
        else:
            # No real pixels configured: the tokenizer's reconstructions of the val tokens (this removes
            # the tokenizer's own error from the score; set eval.real_root for the standard protocol).
            for t in self._val_tokens:
                for chunk in t.split(self.eval.batch_size):
                    pixels = tokenizer.decode(chunk.to(device)).float().clamp(-1, 1)
                    for m in self.metrics.values():
                        m.update(pixels, real=True)
        self._real_done = True
        self._val_tokens = []

    def _log_pictures(self, trainer: L.Trainer, samples: list[torch.Tensor], tokens: list[torch.Tensor],
                      video: bool) -> None:
        if not samples or self.eval.grid_samples == 0:
            return
        pix = to_unit(torch.cat(samples)[: self.eval.grid_samples]).cpu()
        step = trainer.global_step
        writer = _tb_writer(trainer)
        grid = sample_grid(pix)  # videos: a row of frames per sample
        if video and writer is not None:
            try:
                add_gif(writer, "val/samples_video", pix[:8], step)
            except Exception as err:  # noqa: BLE001 - a picture must never stop training
                log.warning("could not log the video summary: %s", err)
        if writer is not None:
            writer.add_image("val/samples", grid, step)
        path = save_png(grid, self.run_dir / "samples" / f"step_{step:07d}.png")
        save_png(grid, self.run_dir / "samples" / "latest.png")
        if self._val_texts:  # caption models: the prompts of the grid, in grid order
            prompts = "\n".join(self._val_texts[: pix.shape[0]]) + "\n"
            (self.run_dir / "samples" / f"step_{step:07d}.txt").write_text(prompts)
        self.last_grid = path


def _tb_writer(trainer: L.Trainer):
    for logger in trainer.loggers:
        exp = getattr(logger, "experiment", None)
        if exp is not None and hasattr(exp, "add_image"):
            return exp
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
