"""Frontier-decoding validation: :class:`FrontierDecodingCallback`: samples a fixed set of conditions with the fast
sampler, decodes them to pixels, logs an image grid (videos: an animated GIF and a frames grid) and a
PNG under ``<run>/samples/``, logs forward passes and images/s, and feeds generated and real samples to
torchmetrics (FID and friends for images, FVD or its named proxy for videos) whose sufficient
statistics are summed across ranks, so the scores are exact under DDP.

Which samples a rank generates depends only on the sample index: the fixed condition list is cut
into chunks of ``eval.batch_size``, chunk ``c`` goes to rank ``c % world`` and is sampled with seed
:func:`~nar.sampling.seeds.batch_seed` ``(eval.seed, c)`` (neighbouring ``eval.seed`` share no chunk, unlike
under the older ``eval.seed + c``, where they did). A 2-process run therefore generates the same samples as a 1-process run. The real
samples scored against are centre-cropped to the decoded samples' size (the model's grid through the tokenizer),
which is the tokenizer's training size only when the grid is its own. Caption models
take their conditions from the validation batches: every rank gathers the first ``eval.num_samples`` captions
of all ranks in the order one process reads them (nar's shard streams give each rank a contiguous block;
Lightning's ``DistributedSampler`` deals them out in turn), so every rank holds the same list. The picture grid
(and its prompts, ``samples/step_*.txt``) is the first ``eval.grid_samples`` samples, gathered on rank 0.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DistributedSampler

import lightning as L
from nar.atomic import write_text
from nar.errors import ConfigError, RuntimeFailure, StopAsked
from nar.lightning.callbacks.run_guard import PreemptionCallback, stop_asked
from nar.lightning.generation import ChunkGenerator, decoded_shape, stream_chunks, to_uint8
from nar.metrics.registry import build_metrics
from nar.metrics.sources import (
    iter_batches,
    iter_records,
    npz_sample_count,
    real_class_ids,
    real_crop_size,
    real_features,
)
from nar.model import NARModel
from nar.pictures import add_gif, sample_grid, save_png
from nar.progress import Progress
from nar.runs.config import EvalConfig, TrainConfig
from nar.sampling.seeds import batch_seed

log = logging.getLogger(__name__)


class _StopAsked(StopAsked):
    """SIGINT/SIGTERM was asked before or during a decoding validation (:class:`_StopGuard`)."""


class _StopGuard:
    """Ends a decoding validation once SIGINT/SIGTERM was asked, within a chunk's time rather than after the whole
    validation (a cluster's grace period is often 30-120 s): while fitting, so the checkpoint of
    :class:`~nar.lightning.callbacks.run_guard.PreemptionCallback` (of this step, whose validation the resumed run
    redoes) comes next; in ``trainer.validate`` (``nar evaluate``, a run's final validation), so
    :func:`nar.lightning.trainer.validate_or_interrupt` ends the run as interrupted (the chunks on disk stay).

    Checked before the first chunk and, as the last consumer, after each chunk. Under DDP the ranks decide together
    (one boolean all-reduce per check) and only after each of their first ``num_chunks // world`` chunks, the
    count every rank reaches, so all of them stop at the same point."""

    def __init__(self, trainer: L.Trainer, guard: PreemptionCallback, num_chunks: int) -> None:
        self.trainer, self.guard = trainer, guard
        self.checks = num_chunks // trainer.world_size
        self.handed = 0

    @classmethod
    def of(cls, trainer: L.Trainer, num_chunks: int) -> _StopGuard | None:
        guard = PreemptionCallback.of(trainer)
        return cls(trainer, guard, num_chunks) if guard is not None else None

    def check(self) -> None:
        # our handler takes SIGINT always and SIGTERM while fitting; in trainer.validate (nar evaluate, a run's final
        # validation) Lightning takes SIGTERM, and the caller turns either into RunInterrupted (validate_or_interrupt)
        asked = stop_asked(self.trainer) is not None
        if self.trainer.world_size > 1:
            asked = self.trainer.strategy.reduce_boolean_decision(asked, all=False)
        if asked:
            raise _StopAsked

    def __call__(self, c: int, pixels: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.handed += 1
        if self.handed <= self.checks:
            self.check()


def condition_list(model: NARModel, num_samples: int, labels: str = "balanced", seed: int = 0, *,
                   real: EvalConfig | None = None) -> torch.Tensor:
    """The fixed class ids ``[num_samples]`` of the validation samples (``eval.labels``): ``balanced`` is round-robin
    over the classes (``num_samples / classes`` each); ``random`` draws them uniformly, as the official c2i sampler's
    ``torch.randint`` does, from a CPU generator seeded from ``seed`` (``eval.seed``) alone; ``real`` gives sample
    ``i`` the class of real sample ``i`` of those scored against (NAR-videos' protocol, :func:`real_condition_ids`
    of ``real``, the eval config). Every rank and a resumed evaluation get the same list."""
    num_classes = model.cfg.num_classes
    if labels == "balanced":
        return torch.arange(num_samples) % num_classes
    if labels == "real":
        if real is None:
            raise ValueError("condition_list: eval.labels=real needs the eval config (real=)")
        return real_condition_ids(real, num_classes, num_samples)
    if labels != "random":
        raise ConfigError(f"'{labels}' is not one of ('balanced', 'random', 'real')", key="eval.labels")
    # a stream of its own: chunk 0 samples its tokens with seed + 0
    stream = int.from_bytes(hashlib.sha256(f"nar-eval-labels:{seed}".encode()).digest()[:8], "little") >> 1
    return torch.randint(0, num_classes, (num_samples,), generator=torch.Generator().manual_seed(stream))


def real_samples(e: EvalConfig) -> tuple[str, str | None, int] | None:
    """``(source, split, count)`` of the real samples scored against, as the validation reads them: an
    ``eval.reference_stats`` batch's ``arr_0`` (``eval.num_real``, else all the images it holds, whatever
    ``eval.num_samples``), else ``eval.real_split`` of ``eval.real_root`` (``eval.num_real``, else
    ``eval.num_samples``: a random subset drawn with ``eval.real_seed`` when the split holds more); None when
    neither is set."""
    if not e.reference_stats and not e.real_root:
        return None
    wanted = e.num_real or e.num_samples
    if e.reference_stats:
        if not e.num_real:
            # an ADM reference batch holds 10k images beside its statistics: all of them, as its evaluator scores
            # precision/recall against all 10k whatever the number of samples (50k, or a 1k validation)
            held = npz_sample_count(e.reference_stats)
            wanted = held if held is not None else wanted
        return e.reference_stats, None, wanted
    return e.real_root, e.real_split, wanted


def real_condition_ids(e: EvalConfig, num_classes: int, num_samples: int) -> torch.Tensor:
    """``eval.labels=real``: class ids ``[num_samples]``, id ``i`` the class of real sample ``i`` of
    :func:`real_samples` (the records the validation scores against, in the order it reads them; NAR-videos
    conditions each sample on its paired random real clip's class), read without decoding pixels
    (:func:`~nar.metrics.sources.real_class_ids`). A ConfigError naming ``eval.labels`` (checked at start) when
    there is no real source, it holds no classes, or it gives other than ``num_samples`` real samples."""
    real = real_samples(e)
    if real is None:
        raise ConfigError("real takes each sample's class from its real sample, but neither eval.real_root nor "
                          "eval.reference_stats is set; point eval.real_root at real shards with classes, or use "
                          "balanced or random", key="eval.labels")
    source, split, wanted = real
    where = (f"eval.reference_stats {source} (arr_0)" if e.reference_stats
             else f"eval.real_root {source} ({split})")
    if wanted != num_samples:
        default = "all of the reference's arr_0" if e.reference_stats else "eval.num_samples"
        held = npz_sample_count(source) if e.reference_stats else None
        fix = (f"generate at most the {held} it holds (eval.num_samples), or use balanced or random"
               if held is not None and held < num_samples else f"set eval.num_real to {num_samples}")
        raise ConfigError(f"real pairs generated sample i with real sample i, but {where} gives {wanted} real samples "
                          f"(eval.num_real, else {default}) for {num_samples} generated (eval.num_samples); {fix}",
                          key="eval.labels")
    ids = real_class_ids(source, split, wanted, seed=e.real_seed)
    if ids is None:
        holds = "arr_1" if e.reference_stats else "labels.npy or a cls member for every sample"
        raise ConfigError(f"real takes the classes of the real samples, but {where} holds none ({holds})",
                          key="eval.labels")
    if len(ids) < num_samples:
        raise ConfigError(f"real: {where} holds {len(ids)} real samples, fewer than the {num_samples} generated "
                          "(eval.num_samples)", key="eval.labels")
    if int(ids.max(initial=0)) >= num_classes:
        raise ConfigError(f"real: {where} holds class {int(ids.max())}, outside the model's {num_classes} classes "
                          "(model.num_classes)", key="eval.labels")
    return torch.from_numpy(ids[:num_samples]).long()


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
        # the real side without eval.real_root / reference_stats, taken from the first decoding validation's val
        # batches: token data: the val tokens, kept until decoded to reconstructions after sampling; pixel data:
        # the val pixels, fed to the metrics as each batch comes (``_real_streamed`` counts them on this rank)
        self._val_tokens: list[torch.Tensor] = []
        self._real_streamed = 0
        self._real_streamed_seconds = 0.0
        self._val_captions: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self._val_texts: list[str] = []  # the captions of _val_captions, for the text-alignment metric
        self.text_metric: Any = None
        self.last_results: dict[str, float] = {}
        self.last_counts: dict[str, int] = {}
        self.last_grid: Path | None = None
        # this rank's wall seconds of the last decoding validation, by stage: tokens (sampling), decode,
        # features (Inception/I3D on generated samples), write/read (chunk files), real, scores
        self.last_seconds: dict[str, float] = {}
        self.real_count = 0
        # the shape of one decoded sample (channels first) of the last decoding validation, and the size the real
        # images were centre-cropped to (None: none read, e.g. FID against a reference's statistics)
        self.last_sample_shape: tuple[int, ...] | None = None
        self.real_image_size: int | None = None
        # the step of the last decoding validation that finished (saved in checkpoints: a run resumed at its last
        # step validates again when that step's validation was stopped or never ran)
        self.validated_step = -1
        # nar evaluate: chunks of generated samples go here (and are read back when it is run again)
        self.sample_dir: Path | None = None

    # ------------------------------------------------------------------------------ collection
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_tokens, self._val_captions, self._val_texts = [], [], []
        if self._real_streamed and not self._real_done:  # an earlier validation stopped before its real side was
            self.metrics = None                           # complete: rebuilt, so no real sample counts twice
        self._real_streamed, self._real_streamed_seconds = 0, 0.0
        # The scores of the last decoding validation stay among Lightning's callback metrics until logged again;
        # a bits-only validation (eval.decode_every) must not hand them to callbacks as its own (the best
        # checkpoint would rank this step by another step's FID).
        for key in self.last_results:
            trainer.callback_metrics.pop(key, None)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        if not self._real_done and not self.eval.real_root and not self.eval.reference_stats \
                and self._decodes_now(trainer):  # a bits-only validation would copy them for nothing
            if "tokens" in batch:
                self._val_tokens.append(batch["tokens"].detach())
            elif "image" in batch or "video" in batch:  # pixels tokenized as the run trains: real samples
                pixels = batch["image"] if "image" in batch else batch["video"]
                self._feed_real(pl_module, to_uint8(pixels.detach().clamp(-1, 1)))
        if pl_module.cfg.model.condition == "caption" and "capfeat" in batch:
            # no rank needs more than eval.num_samples of its own captions (see _gather_captions)
            room = self.eval.num_samples - len(self._val_texts)
            if room > 0:
                feats, mask = batch["capfeat"].detach()[:room], batch.get("capmask")
                self._val_captions.append((feats, mask[:room] if mask is not None else None))
                self._val_texts.extend(list(batch.get("caption") or [""] * batch["capfeat"].shape[0])[:room])

    # ------------------------------------------------------------------------------ the work
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._decodes_now(trainer):
            return  # a bits-only validation (eval.decode_every)
        self.run(trainer, pl_module)

    def _decodes_now(self, trainer: L.Trainer) -> bool:
        """Whether this validation samples and scores (else it is a bits-only one, ``eval.decode_every``): the
        last one of a run and every ``decode_every``-th. The k-th validation of a run is at step k x val_every:
        counted from the step, so a resumed run decodes at the steps an uninterrupted one does."""
        last = trainer.state.fn != "fit" or trainer.global_step >= trainer.max_steps
        every = self.cfg.trainer.val_every
        return last or not every or (trainer.global_step // every) % self.eval.decode_every == 0

    @torch.no_grad()
    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        model: NARModel = pl_module.eval_model
        tokenizer = pl_module.tokenizer
        device = pl_module.device
        rank, world = trainer.global_rank, trainer.world_size
        video = len(model.cfg.grid) == 3
        was_training = model.training
        model.eval()
        e = self.eval
        self._built_metrics(pl_module)
        conds, masks = self._conditions(trainer, model, e.num_samples, device)
        n, bs = conds.shape[0], e.batch_size
        labels = conds.cpu() if model.cfg.condition == "class" else None
        chunks = [c for c in range(math.ceil(n / bs)) if c % world == rank]  # chunk c: batch_seed(eval.seed, c)
        results: dict[str, float] = {"val/forward_passes": float(model.num_passes)}
        grid: list[tuple[int, torch.Tensor]] = []  # (chunk, its first samples) of the first grid_samples
        gen = ChunkGenerator(model, tokenizer, self.cfg.sampling, device, sampler=e.sampler)
        stop = _StopGuard.of(trainer, math.ceil(n / bs))
        try:
            if stop is not None:
                stop.check()
            if tokenizer is None:  # no pixels: time the token generation only
                batches = [(conds[c * bs:(c + 1) * bs], masks[c * bs:(c + 1) * bs] if masks is not None else None,
                            batch_seed(e.seed, c)) for c in chunks]
                for c, tokens in zip(chunks, gen.tokens_stream(batches, bs)):
                    gen.generated += tokens.shape[0]
                    if stop is not None:
                        stop(c, tokens, None)
            else:
                shape = decoded_shape(tokenizer, model.cfg.grid)  # what a stored chunk must hold, and the reals' size
                self.last_sample_shape = shape
                text = self._text_metric(model, device)
                seconds: dict[str, float] = {}
                consumers = [self._metric_consumer(seconds), self._grid_consumer(grid)]
                if text is not None:
                    consumers.append(self._text_consumer(text, bs))
                if stop is not None:
                    consumers.append(stop)  # last: the chunk is counted everywhere before a stop
                local = sum(min(bs, n - c * bs) for c in chunks)
                with Progress(local, f"sampling {n} (this rank {local})", unit="img", every_s=30,
                              enabled=trainer.is_global_zero and local > bs) as progress:  # more than a chunk
                    reused = stream_chunks(gen, conds, masks, chunks, bs, e.seed, consumers, folder=self.sample_dir,
                                           labels=labels, progress=progress, seconds=seconds, sample_shape=shape)
                if reused:
                    log.info("rank %d: %d of %d chunks read back from %s", rank, reused, len(chunks), self.sample_dir)
                if world > 1:  # the grid's chunks were made on every rank
                    parts = [None] * world if rank == 0 else None
                    dist.gather_object(grid, parts, dst=0)
                    grid = [part for rank_parts in parts or [] for part in rank_parts]
                start = time.perf_counter()
                if not self._real_done:
                    self._update_real(trainer, pl_module, tokenizer, video, shape)
                seconds["real"] = time.perf_counter() - start + self._real_streamed_seconds  # during the val loop too
                start = time.perf_counter()
                for m in self.metrics.values():
                    for key, value in m.compute().items():
                        results[f"val/{key}"] = float(value)
                    m.reset()
                seconds["scores"] = time.perf_counter() - start
                self.last_seconds = {"tokens": gen.generate_seconds, "decode": gen.decode_seconds, **seconds}
                if text is not None:
                    for key, value in text.compute().items():
                        results[f"val/{key}"] = float(value)
                    text.reset()
        except _StopAsked:  # nothing is logged: BestCheckpoint skips this validation
            for m in [*self.metrics.values(), *([self.text_metric] if self.text_metric is not None else [])]:
                m.reset()
            model.train(was_training)
            if trainer.is_global_zero:
                log.warning("step %d: decoding validation stopped after %d of %d samples (this rank): a stop was "
                            "asked", trainer.global_step, gen.generated, n)
            return {}
        if gen.generated and gen.generate_seconds > 0:
            results["val/images_per_sec"] = gen.generated / gen.generate_seconds
        if gen.generated and gen.decode_seconds > 0:
            results["val/decode_images_per_sec"] = gen.generated / gen.decode_seconds

        for key, value in results.items():
            pl_module.log(key, value, rank_zero_only=False, sync_dist=False)
        if trainer.is_global_zero:
            self._log_pictures(trainer, [pixels for _, pixels in sorted(grid, key=lambda part: part[0])], video)
        model.train(was_training)
        self.last_results = results
        self.last_counts = {"generated": n, "real": self.real_count}
        self.validated_step = trainer.global_step
        if trainer.is_global_zero:
            log.info("step %d: %s", trainer.global_step, ", ".join(f"{k}={v:.4g}" for k, v in sorted(results.items())))
        return results

    def _built_metrics(self, pl_module: L.LightningModule) -> dict[str, Any]:
        """The metrics, built at their first use (on the module's device; none without a tokenizer)."""
        tokenizer, device, e = pl_module.tokenizer, pl_module.device, self.eval
        if self.metrics is None:
            video = len(pl_module.eval_model.cfg.grid) == 3
            self.metrics = build_metrics(e.metrics, video=video, inception_weights=e.inception_weights,
                                         i3d_path=e.i3d_path, reference_stats=e.reference_stats,
                                         have_real=bool(e.real_root) or self._reference_images()) \
                if tokenizer is not None else {}
            if e.compile_decoder and tokenizer is not None and device.type == "cuda":
                tokenizer.decoder.compile()  # in place, once; the first decode compiles
        for m in self.metrics.values():
            m.to(device)
        return self.metrics

    def _feed_real(self, pl_module: L.LightningModule, pixels: torch.Tensor) -> None:
        """Real samples of a val batch (uint8) into the metrics now: no validation holds a split's pixels (UCF-101
        clips at data.limit_val_samples 2000 would be ~1.5 GB per process)."""
        start = time.perf_counter()
        for m in self._built_metrics(pl_module).values():
            m.update(pixels, real=True)
        self._real_streamed += pixels.shape[0]
        self._real_streamed_seconds += time.perf_counter() - start

    def state_dict(self) -> dict[str, Any]:
        return {"validated_step": self.validated_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validated_step = int(state_dict.get("validated_step", -1))

    # ------------------------------------------------------------------------------ consumers
    def _metric_consumer(self, seconds: dict[str, float]):
        def consume(c: int, pixels: torch.Tensor, labels: torch.Tensor | None) -> None:
            start = time.perf_counter()
            for m in self.metrics.values():
                m.update(pixels, real=False)
            seconds["features"] = seconds.get("features", 0.0) + time.perf_counter() - start
        return consume

    def _grid_consumer(self, grid: list[tuple[int, torch.Tensor]]):
        """Keeps the part of chunk ``c`` among the first ``eval.grid_samples`` samples (whichever rank made it)."""
        first = self.eval.batch_size

        def consume(c: int, pixels: torch.Tensor, labels: torch.Tensor | None) -> None:
            wanted = self.eval.grid_samples - c * first
            if wanted > 0:
                grid.append((c, pixels[:wanted].cpu()))
        return consume

    def _text_consumer(self, metric: Any, batch_size: int):
        def consume(c: int, pixels: torch.Tensor, labels: torch.Tensor | None) -> None:
            self._update_text(metric, pixels, c * batch_size)
        return consume

    def _conditions(self, trainer: L.Trainer, model: NARModel, n: int,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(conds, masks)`` of the samples: ``n`` class ids, or the first ``n`` validation captions
        (``capfeat [n, L, D]``, ``capmask [n, L]`` or None; fewer when the split has fewer), the same on every
        rank; their texts become ``self._val_texts``."""
        if model.cfg.condition == "class":
            return condition_list(model, n, self.eval.labels, self.eval.seed, real=self.eval).to(device), None
        masks = [m for _, m in self._val_captions]
        feats = torch.cat([f for f, _ in self._val_captions]) if self._val_captions else None
        mask = torch.cat(masks) if masks and all(m is not None for m in masks) else None
        if trainer.world_size > 1:
            feats, mask, self._val_texts = _gather_captions(feats, mask, self._val_texts, n,
                                                            interleaved=_dealt_in_turn(trainer))
        if feats is None or not feats.shape[0]:
            raise RuntimeError("caption-conditioned validation needs caption features in the val batches")
        return feats[:n].to(device), mask[:n].to(device) if mask is not None else None

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

    def _reference_images(self) -> bool:
        """Whether ``eval.reference_stats`` is a reference batch holding its images (``arr_0``, as ADM's do)."""
        from nar.metrics.registry import reference_keys

        return bool(self.eval.reference_stats) and "arr_0" in reference_keys(self.eval.reference_stats)

    def _update_real(self, trainer: L.Trainer, pl_module: L.LightningModule, tokenizer: Any, video: bool,
                     sample_shape: tuple[int, ...] | None = None) -> None:
        """The real side of the metrics; real images (clip frames) are centre-cropped to the side of the generated
        samples, ``sample_shape`` (:func:`_real_size`)."""
        image = self.metrics.get("image") if self.metrics else None
        needs_images = image is not None and image.keeps_features  # precision/recall, KID
        if not self.metrics or (self.eval.reference_stats and not needs_images):
            self._real_done = True  # FID/sFID against the reference's statistics
            return
        if trainer.is_global_zero:  # minutes on a CPU the first time (then the features come from the cache)
            log.info("step %d: features of the real samples for %s", trainer.global_step, ", ".join(self.metrics))
        device = pl_module.device
        e = self.eval
        count = 0
        real = real_samples(e)  # eval.labels=real takes its classes from these very samples
        if real is not None:
            real_root, real_split, wanted = real
            size = _real_size(sample_shape, tokenizer)
            self.real_image_size = size
            if image is not None and trainer.world_size == 1 and len(self.metrics) == 1 \
                    and "sfid" not in image.metrics:
                # one process: the real features come from (and go to) a cache, shared by every run scored
                # against the same real samples at the same size
                features = real_features(real_root, image.extractor, real_split, wanted, image_size=size,
                                         batch_size=e.batch_size, device=device, seed=e.real_seed)
                image.update_features(features.to(device), real=True)
                count = features.shape[0]
            else:
                records = iter_records(real_root, real_split, wanted, image_size=size,
                                       rank=trainer.global_rank, world_size=trainer.world_size, seed=e.real_seed)
                for pixels, _ in iter_batches(records, e.batch_size):
                    count += pixels.shape[0]
                    for m in self.metrics.values():
                        m.update(pixels.to(device), real=True)
            total = _summed_over_ranks(trainer, count, device)
            if total < wanted:
                source = (f"eval.reference_stats {real_root} (arr_0)" if e.reference_stats
                          else f"eval.real_root {real_root} ({real_split})")
                message = (f"{source} gave {total} real samples, {wanted} were asked for (eval.num_real, else "
                           "eval.num_samples, or all of a reference batch's arr_0)")
                if not e.allow_fewer:
                    raise RuntimeFailure(message + "; lower eval.num_real or set eval.allow_fewer=true")
                log.warning("%s; scoring on fewer (eval.allow_fewer)", message)
            self.real_count = total
        else:
            # No real pixels configured: on token data the tokenizer's reconstructions of the val tokens (this
            # removes the tokenizer's own error from the score; set eval.real_root for the standard protocol), on
            # pixel data the val samples themselves, already fed as their batches came (_feed_real)
            count = self._real_streamed
            for chunk in (chunk for t in self._val_tokens for chunk in t.split(e.batch_size)):
                pixels = to_uint8(tokenizer.decode(chunk.to(device)).clamp(-1, 1))
                count += pixels.shape[0]
                for m in self.metrics.values():
                    m.update(pixels, real=True)
            # each rank fed its own val share (fewer where damaged val samples were tolerated); the metrics sum
            # every rank's, and so does the count `nar evaluate` reports
            self.real_count = _summed_over_ranks(trainer, count, device)
        self._real_done = True
        self._val_tokens = []

    def _log_pictures(self, trainer: L.Trainer, samples: list[torch.Tensor], video: bool) -> None:
        if not samples or self.eval.grid_samples == 0:
            return
        pix = torch.cat(samples)[: self.eval.grid_samples].float() / 255
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
            write_text(self.run_dir / "samples" / f"step_{step:07d}.txt", prompts)
        self.last_grid = path


def _real_size(sample_shape: tuple[int, ...] | None, tokenizer: Any) -> int | None:
    """The side real images are centre-cropped to: the decoded samples' (``sample_shape`` ``(3, [T,] H, W)``; a
    model whose grid is not the tokenizer's own decodes at another size than the tokenizer was trained at), else the
    tokenizer's ``image_size``. Non-square samples: their short side, said in a warning (the crop is square)."""
    if sample_shape is None:
        return getattr(getattr(tokenizer, "config", None), "image_size", None)
    return real_crop_size(*sample_shape[-2:])


def _summed_over_ranks(trainer: L.Trainer, count: int, device: torch.device) -> int:
    """``count`` summed over every rank (collective: every rank calls it)."""
    return int(trainer.strategy.reduce(torch.tensor(float(count), device=device), reduce_op="sum").item())


def _dealt_in_turn(trainer: L.Trainer) -> bool:
    """Whether the validation samples are dealt out to the ranks in turn (Lightning's ``DistributedSampler``:
    sample ``i`` on rank ``i % world``) rather than in contiguous blocks (nar's shard streams)."""
    loaders = trainer.val_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
    return isinstance(getattr(loader, "sampler", None), DistributedSampler)


def _gather_captions(feats: torch.Tensor | None, mask: torch.Tensor | None, texts: list[str], n: int, *,
                     interleaved: bool) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
    """Every rank's validation captions (``feats [k, L, D]``, ``mask [k, L]`` or None, ``texts``: this rank's first
    ``k``, in its reading order), gathered on every rank in the order one process reads them, up to ``n``
    samples (collective: every rank calls it, also one without captions).

    ``interleaved``: global sample ``j * world + r`` is rank ``r``'s ``j``-th; else rank ``r``'s block follows rank
    ``r - 1``'s. A mask missing on any rank is missing for all (as for one batch without it in one process)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if interleaved:  # the same on every rank (the loader's kind), so all ranks make the same collectives
        keep = min(len(texts), math.ceil(n / world))
    else:  # only this rank's first samples can follow the blocks of the ranks before it among the first n
        counts: list[Any] = [None] * world
        dist.all_gather_object(counts, len(texts))
        keep = max(0, min(len(texts), n - sum(counts[:rank])))
    mine = (feats[:keep].cpu() if keep else None, mask[:keep].cpu() if keep and mask is not None else None,
            texts[:keep])
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, mine)
    sizes = [len(t) for _, _, t in parts]
    starts = [sum(sizes[:r]) for r in range(world)]
    if interleaved:
        order = [starts[r] + j for j in range(max(sizes)) for r in range(world) if j < sizes[r]]
    else:
        order = list(range(sum(sizes)))
    order = order[:n]
    held = [p for p in parts if len(p[2])]
    if not held:
        return None, None, []
    index = torch.tensor(order, dtype=torch.long)
    feats = torch.cat([f for f, _, _ in held])[index]
    mask = torch.cat([m for _, m, _ in held])[index] if all(m is not None for _, m, _ in held) else None
    flat = [t for _, _, ts in held for t in ts]
    return feats, mask, [flat[i] for i in order]


def _tb_writer(trainer: L.Trainer):
    for logger in trainer.loggers:
        exp = getattr(logger, "experiment", None)
        if exp is not None and hasattr(exp, "add_image"):
            return exp
    return None
