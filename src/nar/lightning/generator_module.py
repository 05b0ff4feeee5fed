"""LightningModule around the NAR generator (or its raster baseline) and a frozen tokenizer.

The model (:class:`~nar.model.NARModel`) knows nothing of Lightning; this module owns the loss
(cross-entropy of the mixed logits, teacher forced), condition dropout for CFG, AdamW with weight
decay only on >= 2-D weights, the warm-up + schedule, the EMA copy used for evaluation, and the
non-finite loss guard (under DDP the ranks decide together, so all of them stop). A resumed run trains with its own
``optim.*`` (lr, weight decay, betas, eps) and schedule, not the ones its checkpoint's optimizer was saved with
(:meth:`GeneratorModule.on_train_start`), and a validation that a stop cut short logs nothing (the resumed run
validates that step again: :class:`~nar.lightning.callbacks.run_guard.PreemptionCallback`). The EMA weights are a
frozen submodule, so they live in every checkpoint and a resumed run continues them; they stay float32 when
``trainer.precision`` casts the module to bf16/fp16 (:meth:`GeneratorModule.to`), and a resume may turn the EMA
on (it starts from the resumed weights) or off (the saved EMA is dropped).

Under ``trainer.strategy: fsdp`` (:mod:`nar.lightning.sharding`) ``configure_model`` shards the model and its
EMA copy the same way (each block, then the root), the EMA update lerps matching local shards, and every
validation gathers the evaluation weights once into a plain model (:attr:`eval_model`) that the teacher-forced
loss and the frontier-decoding callback use, dropped when the validation ends.
"""

from __future__ import annotations

import bisect
import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, SumMetric

import lightning as L
from nar.config import from_dict, to_dict
from nar.errors import NarError, RuntimeFailure
from nar.lightning.callbacks.run_guard import PreemptionCallback
from nar.lightning.checkpointing import fit_optional_state
from nar.lightning.sharding import (
    ShardedStrategy,
    full,
    gather_full_model,
    is_sharded,
    local,
    without_submodule,
)
from nar.lightning.trainer import take_optimizer_settings
from nar.model import NARModel
from nar.runs.config import TrainConfig

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeFailure):
    """The training loss became NaN or infinite; the message names the step and the batch."""


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float, *, epoch_steps: int = 0,
              milestones: Sequence[int] = (), gamma: float = 0.2, warmup_start_ratio: float = 0.0,
              interval: str = "step", epochs: int = 1) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    The warm-up is ``r + (1 - r) * (step + 1) / warmup`` with ``r = warmup_start_ratio``: 1.0 at step
    ``warmup - 1``; NAR-videos' trainer applies this line with its 1-based step counter and ``r`` its min_lr_mult.
    ``multistep`` is the official recipe's ``MultiStepLR`` stepped once per epoch: in epoch ``step // epoch_steps``
    the rate is ``gamma`` to the number of ``milestones`` (epochs) already reached.
    ``cosine`` and ``linear`` go from 1 to ``min_ratio``: with ``interval="step"`` over steps ``warmup..total``;
    with ``interval="epoch"`` over ``epochs`` epochs, epoch ``e = step // epoch_steps`` at progress ``e / epochs``
    (the official t2i recipe's ``CosineAnnealingLR(T_max=epochs)``, stepped after each epoch).
    """
    if warmup > 0 and step < warmup:
        return warmup_start_ratio + (1.0 - warmup_start_ratio) * (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "multistep":
        return gamma ** bisect.bisect_right(list(milestones), step // max(1, epoch_steps))
    if interval == "epoch":  # epochs from step 0, as multistep counts them: a warm-up overlaps the first
        progress = min(1.0, (step // max(1, epoch_steps)) / max(1, epochs))
    else:
        progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * (1.0 - progress)  # linear


def _drop_condition(model: NARModel, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
    """Forward pre-hook: ``model(tokens, cond, ..., drop=mask [B])`` replaces ``cond`` by the null condition where
    ``mask`` is True (CFG training). It runs inside the forward, after FSDP's own pre-hook has gathered the
    model's weights: outside it, the learned null caption would be a shard, and its gradient would miss the
    reduce-scatter."""
    if "drop" not in kwargs:
        return None
    kwargs = dict(kwargs)
    drop = kwargs.pop("drop")
    if drop is not None:
        args = (args[0], model.drop_condition(args[1], drop), *args[2:])
    return args, kwargs


class GeneratorModule(L.LightningModule):
    """Trains ``NARModel(cfg.model)`` on token batches (or pixels tokenized on the fly).

    Batches (from :mod:`nar.data.datamodules`): ``{"tokens": int64 [B, *grid], "label": [B]}`` or
    ``{"image": [B, 3, H, W] | "video": [B, 3, T, H, W], "label": [B]}``; text-to-image batches carry
    ``capfeat [B, L, D]`` and ``capmask [B, L]`` instead of a usable label.

    Logged: ``train/loss``, ``train/loss_<axis>`` (each head's own loss on the cells it predicts),
    ``train/lr``, ``train/grad_norm`` (global norm before clipping, when clipping), ``val/loss`` (EMA weights,
    exact mean over every rank's samples).
    """

    def __init__(self, cfg: TrainConfig | dict[str, Any], tokenizer: nn.Module | None = None) -> None:
        super().__init__()
        if isinstance(cfg, dict):  # rebuilt from a checkpoint's hyper-parameters
            cfg = from_dict(TrainConfig, cfg)
        self.cfg = cfg
        self.save_hyperparameters({"cfg": to_dict(cfg)})
        self.model = NARModel(cfg.model)
        self.ema_model: NARModel | None = None
        if cfg.ema.enabled:
            self.ema_model = copy.deepcopy(self.model).eval()
            self.ema_model.requires_grad_(False)
        # Condition dropout inside the model's forward (the EMA copy has no such hook): see _drop_condition.
        self.model.register_forward_pre_hook(_drop_condition, with_kwargs=True)
        # Not a submodule: the tokenizer is frozen and loaded from its own file, so it stays out of checkpoints.
        object.__setattr__(self, "_tokenizer", tokenizer)
        object.__setattr__(self, "_train_forward", None)
        object.__setattr__(self, "_gathered", None)  # sharded runs: the plain evaluation copy during validation
        self.val_loss = MeanMetric()
        self.val_count = SumMetric()

    # ------------------------------------------------------------------------------ helpers
    def to(self, *args: Any, **kwargs: Any) -> GeneratorModule:
        """``nn.Module.to``, except that a dtype cast leaves the EMA copy in float32 (only moved): Lightning's
        ``bf16-true``/``16-true`` cast the whole module, and an EMA step of ``1 - decay`` (1e-4) times the gap
        to the weights rounds away in bf16. The EMA then lerps towards the half-precision weights, upcast."""
        device, dtype = torch._C._nn._parse_to(*args, **kwargs)[:2]
        ema = self._modules.get("ema_model")
        if dtype is None or ema is None:
            return super().to(*args, **kwargs)
        with without_submodule(self, "ema_model"):
            super().to(*args, **kwargs)
        if device is not None:
            ema.to(device)
        return self

    @property
    def tokenizer(self) -> nn.Module | None:
        if self._tokenizer is None and self.cfg.tokenizer.path:
            from nar.tokenizers import load_tokenizer

            frozen = load_tokenizer(self.cfg.tokenizer.path, config=self.cfg.tokenizer.config or None).requires_grad_(False)
            object.__setattr__(self, "_tokenizer", frozen)
        if self._tokenizer is not None:
            self._tokenizer.to(self.device)
        return self._tokenizer

    @property
    def eval_model(self) -> NARModel:
        """The weights evaluation and sampling use: the EMA copy when enabled (sharded runs: its gathered
        plain copy while a validation runs)."""
        if self._gathered is not None:
            return self._gathered
        return self.ema_model if self.ema_model is not None else self.model

    @property
    def sharded(self) -> bool:
        """Whether the model is sharded (``trainer.strategy: fsdp``)."""
        return is_sharded(self.model)

    def configure_model(self) -> None:
        """Shard the model and its EMA copy alike under :class:`~nar.lightning.sharding.ShardedStrategy`
        (Lightning calls this before every fit/validate: it shards once)."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        if not isinstance(strategy, ShardedStrategy) or self.sharded:
            return
        strategy.shard(self.model)
        if self.ema_model is not None:
            strategy.shard(self.ema_model)

    def _forward_train(self):
        """``self.model`` called as a module (its ``forward`` is ``forward_train``), compiled when asked: the call
        runs the hooks, FSDP's (gather each unit's weights, free them after) and the condition dropout."""
        if self._train_forward is None:
            fwd = self.model
            if self.cfg.trainer.compile:
                fwd = torch.compile(fwd)
            object.__setattr__(self, "_train_forward", fwd)
        return self._train_forward

    def batch_inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(tokens [B, N], cond, cond_mask)`` from a data batch; pixels are tokenized with the frozen tokenizer."""
        if "tokens" in batch:
            tokens = batch["tokens"]
        else:
            pixels = batch["image"] if "image" in batch else batch.get("video")
            if pixels is None:
                raise NarError(f"batch has none of tokens/image/video (keys: {sorted(batch)})")
            if self.tokenizer is None:
                raise NarError("pixel batches need a tokenizer: set tokenizer.path")
            with torch.no_grad():
                tokens = self.tokenizer.encode(pixels)
        tokens = tokens.reshape(tokens.shape[0], -1).long()
        if tokens.shape[1] != self.cfg.model.num_cells:
            raise NarError(f"batch grid has {tokens.shape[1]} cells, model.grid={self.cfg.model.grid} has "
                           f"{self.cfg.model.num_cells}")
        if self.cfg.model.condition == "caption":
            feats, mask = self.caption_inputs(batch)
            return tokens, feats, mask
        return tokens, batch["label"].long(), None

    def caption_inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(capfeat [B, L, D], capmask [B, L] | None)``: stored in the token shards, or encoded on the fly
        from ``batch["caption"]`` with the run's text encoder (``cfg.text``). On-the-fly features are put
        back into ``batch`` so that callbacks (validation sampling) see the same conditions."""
        if "capfeat" in batch:
            return batch["capfeat"], batch.get("capmask")
        if "caption" not in batch:
            raise NarError(f"caption model: the batch has neither capfeat nor caption (keys: {sorted(batch)}); "
                           "extract tokens with `nar data tokens --text-encoder ...` or use shards with captions")
        feats, mask = self.text_encoder.encode(list(batch["caption"]))
        batch["capfeat"], batch["capmask"] = feats.to(self.device), mask.to(self.device)
        return batch["capfeat"], batch["capmask"]

    @property
    def text_encoder(self):
        """The frozen :class:`~nar.text.TextEncoder` of ``cfg.text`` (loaded once; not part of checkpoints)."""
        if getattr(self, "_text_encoder", None) is None:
            from nar.text import build_text_encoder

            object.__setattr__(self, "_text_encoder", build_text_encoder(self.cfg.text, self.cfg.model))
        return self._text_encoder

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        tokens, cond, cond_mask = self.batch_inputs(batch)
        B = tokens.shape[0]
        drop = None
        if self.cfg.optim.cond_dropout > 0:
            drop = torch.rand(B, device=tokens.device) < self.cfg.optim.cond_dropout
        elif self.cfg.model.condition == "caption":
            # Nothing dropped, but the null caption still joins the graph (torch.where keeps every caption, its
            # gradient is zero): DDP runs with find_unused_parameters=False and stops on a parameter outside it.
            drop = torch.zeros(B, dtype=torch.bool, device=tokens.device)
        # per-head losses on the steps Lightning writes to the logger ((step + 1) % log_every == 0)
        log_heads = (self.global_step + 1) % self.cfg.trainer.log_every == 0
        out = self._forward_train()(tokens, cond, cond_mask, return_axis_logits=log_heads, drop=drop)
        logits, per_axis = out if log_heads else (out, None)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1))
        self._check_finite(loss, batch, batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        if per_axis is not None:
            with torch.no_grad():
                for name, (axis_logits, valid) in zip(self.cfg.model.axis_names, per_axis):
                    if valid.any():
                        head_loss = F.cross_entropy(axis_logits[:, valid].reshape(-1, axis_logits.shape[-1]).float(),
                                                    tokens[:, valid].reshape(-1))
                        self.log(f"train/loss_{name}", head_loss, batch_size=B)
        if self._trainer is not None:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=B)
        return loss

    def _check_finite(self, loss: torch.Tensor, batch: dict[str, Any], batch_idx: int) -> None:
        finite = bool(torch.isfinite(loss.detach()).item())
        if self._trainer is not None and self.trainer.world_size > 1:
            # decided together: a rank stopping alone would leave the others waiting in the gradient all-reduce
            if self.trainer.strategy.reduce_boolean_decision(finite, all=True):
                return
            if finite:
                raise NonFiniteLossError(f"non-finite training loss on another rank at step {self.global_step}; "
                                         "stopping (that rank names its batch)")
        elif finite:
            return
        keys = batch.get("__key__")
        sample = f", samples {list(keys)[:8]}" if keys is not None else ""
        raise NonFiniteLossError(f"non-finite training loss {loss.item()} at step {self.global_step} "
                                 f"(batch {batch_idx} of epoch {self.current_epoch}{sample}); stopping. "
                                 f"Lower optim.lr, raise optim.warmup_steps, or check the data.")

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Here, not in on_train_batch_end: the callbacks' on_train_batch_end (the step checkpoint, the save on
        # SIGTERM) run before the module's, so a checkpoint would miss this step's EMA update and a resumed
        # run's EMA would lag an uninterrupted one's by that update.
        if self.ema_model is not None:
            self.update_ema()

    @torch.no_grad()
    def update_ema(self) -> None:
        step = self.global_step
        decay = self.cfg.ema.decay
        if self.cfg.ema.warmup:
            decay = min(decay, (1 + step) / (10 + step))
        # Sharded: both copies are sharded by the same rule, so each rank lerps its own matching shards.
        ema = [local(p) for p in self.ema_model.parameters()]
        cur = [local(p.detach()) for p in self.model.parameters()]
        if all(e.dtype == c.dtype for e, c in zip(ema, cur)):
            torch._foreach_lerp_(ema, cur, 1.0 - decay)
        else:  # half-precision weights (bf16-true), float32 EMA: upcast one tensor at a time
            for e, c in zip(ema, cur):
                e.lerp_(c.to(e.dtype), 1.0 - decay)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip by global norm and log that norm (``train/grad_norm``, before clipping). Sharded gradients are
        ``DTensor`` shards: ``clip_grad_norm_`` all-reduces the norm over them, so every rank clips alike."""
        if not gradient_clip_val:
            return
        if gradient_clip_algorithm not in (None, "norm"):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
        self.log("train/grad_norm", full(norm), batch_size=self.cfg.data.batch_size)

    def optimizer_settings(self) -> list[dict[str, Any]]:
        """The hyper-parameters of each AdamW parameter group, from ``cfg.optim``: the decayed weights, then the
        spared ones (weight decay 0)."""
        o = self.cfg.optim
        common = {"lr": o.lr, "betas": tuple(o.betas), "eps": o.eps}
        return [{**common, "weight_decay": o.weight_decay}, {**common, "weight_decay": 0.0}]

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        # nanoGPT's rule (the official image recipe): matrices and embeddings decay, gains (norms) do not;
        # optim.decay_embeddings=false also spares the lookup tables (the official video recipe: Linear weights only)
        spared = set() if o.decay_embeddings else {id(p) for p in self.model.embedding_parameters()}
        decays = [p.dim() >= 2 and id(p) not in spared for p in params]
        decayed, kept = self.optimizer_settings()
        groups = [{"params": [p for p, d in zip(params, decays) if d], **decayed},
                  {"params": [p for p, d in zip(params, decays) if not d], **kept}]
        # fused AdamW only on plain CUDA tensors; sharded (DTensor) parameters take the foreach path
        fused = torch.cuda.is_available() and all(p.is_cuda for p in params) and not self.sharded
        opt = torch.optim.AdamW(groups, lr=o.lr, fused=fused or None)
        total = self.cfg.trainer.max_steps
        if o.counts_epochs and o.epoch_steps is None:
            what = "multistep" if o.schedule == "multistep" else f"{o.schedule} with optim.schedule_interval=epoch"
            raise NarError(f"optim.schedule={what} needs optim.epoch_steps (nar train derives it from the data)")
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, o.warmup_steps, total, o.schedule, o.min_lr_ratio, epoch_steps=o.epoch_steps or 0,
                                     milestones=o.milestone_epochs, gamma=o.gamma,
                                     warmup_start_ratio=o.warmup_start_ratio, interval=o.schedule_interval,
                                     epochs=o.epochs))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if "__empty__" in batch:  # nar evaluate without a data folder: only the decoding callback runs
            return
        tokens, cond, cond_mask = self.batch_inputs(batch)
        model = self.eval_model
        was_training = model.training
        model.eval()
        logits = model.forward_train(tokens, cond, cond_mask)
        model.train(was_training)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1), reduction="none")
        self.val_loss.update(loss.view(tokens.shape[0], -1).mean(1))  # per-sample means: exact across ranks
        self.val_count.update(torch.tensor(float(tokens.shape[0]), device=tokens.device))

    def on_validation_epoch_end(self) -> None:
        guard = PreemptionCallback.of(self._trainer) if self._trainer is not None else None
        if guard is not None and guard.validation_cut_short(self._trainer):
            # a stop was asked during it (its decoding stopped after a chunk): nothing of it is logged, and the
            # resumed run validates this step again
            self.val_loss.reset()
            self.val_count.reset()
            return
        if self.val_loss.update_count:
            # The teacher-forced cross-entropy is the exact negative log-likelihood of the sampler's own
            # distribution (unguided, temperature 1): every schedule draws a pass's cells independently from
            # the logits this pass computes for them (NAR_SPEC §9). In bits it compares schedules and heads.
            nats = self.val_loss.compute()
            self.log("val/loss", nats, sync_dist=False)
            self.log("val/bits_per_token", nats / math.log(2), sync_dist=False)
            self.log("val/bits_per_image", nats * self.cfg.model.num_cells / math.log(2), sync_dist=False)
            self.log("val/samples", self.val_count.compute(), sync_dist=False)  # every rank's, summed
        self.val_loss.reset()
        self.val_count.reset()

    def on_validation_start(self) -> None:
        # After the callbacks' start hooks, before any batch: every rank gathers at the same point.
        if self.sharded:
            source = self.ema_model if self.ema_model is not None else self.model
            object.__setattr__(self, "_gathered", gather_full_model(source))

    def on_validation_end(self) -> None:
        # After the callbacks' epoch-end hooks (the frontier decoding): the gathered copy is freed.
        object.__setattr__(self, "_gathered", None)

    test_step = validation_step
    on_test_epoch_end = on_validation_epoch_end
    on_test_start = on_validation_start
    on_test_end = on_validation_end

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning loads the state dict strictly after this hook: fit it to ema.enabled of this run (a resume may
        # turn the EMA on or off).
        state = checkpoint.get("state_dict")
        if not state:  # sharded checkpoints: ShardedStrategy.load_checkpoint loads (and starts the EMA) itself
            return
        fit_optional_state(
            state, "ema_model.", self.ema_model is not None,
            lambda: {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")},
            filled="ema.enabled=true but the checkpoint has no EMA (its run had ema.enabled=false): the EMA starts "
                   "from the resumed weights",
            dropped="ema.enabled=false: this run drops the EMA weights of the checkpoint it resumes (evaluation "
                    "uses the trained weights)")

    def on_train_start(self) -> None:
        # After Lightning has restored a resumed checkpoint's optimizer and scheduler, with the lr, weight decay,
        # betas, eps and base rates of the run that saved them: this run's optim.* and schedule take over.
        configs = self.trainer.lr_scheduler_configs
        changed = take_optimizer_settings(self.trainer.optimizers[0], self.optimizer_settings(),
                                          configs[0].scheduler if configs else None)
        if changed and self.trainer.is_global_zero:
            log.info("step %d: the optimizer takes this run's settings, not its checkpoint's: %s", self.global_step,
                     ", ".join(changed))

    def on_fit_start(self) -> None:
        if self.ema_model is not None:
            self.ema_model.eval()
        if self.cfg.trainer.throughput:
            from nar.model.flops import training_flops_per_sample

            # read by Lightning's ThroughputMonitor each step: FLOP/s and, where the device's peak is known, MFU
            self.flops_per_batch = training_flops_per_sample(self.cfg.model) * self.cfg.data.batch_size
