"""Sharded training (``trainer.strategy: fsdp``): FSDP2 through Lightning's ``ModelParallelStrategy``.

Why FSDP2 (``torch.distributed.fsdp.fully_shard``) and not Lightning's ``FSDPStrategy`` (FSDP1): FSDP1's
precision plugin refuses gradient clipping by norm, its flat parameters cannot mix the trained weights with
the frozen EMA copy, parameters read outside its forward are flat shards, and Lightning refuses it on a CPU
(so nothing could test it here). FSDP2 keeps every parameter a ``DTensor`` sharded on dim 0:
``torch.nn.utils.clip_grad_norm_`` all-reduces the global norm over the shards, the EMA copy is sharded by the
same rule so its update is a local ``lerp`` of matching shards, and it runs on gloo (CPU) as on NCCL.

What lives where:

- :class:`ShardedStrategy` (here): the 1-D data-parallel mesh over every process, :meth:`~ShardedStrategy.shard`
  (each transformer block its own FSDP unit, then the model as root; called from
  ``GeneratorModule.configure_model`` for the model and its EMA copy), and the checkpoint files below.
- ``nar.lightning.generator_module``: the EMA update on local shards, the gathered evaluation copy
  (:func:`gather_full_model`) built at validation start and dropped at its end, the clipping that logs
  ``train/grad_norm``.
- ``nar.model.io``: reading a sharded checkpoint (``sharded_folder`` checks it is complete; the weights are read
  with ``torch.distributed.checkpoint`` on one process, no process group), so ``nar sample``/``nar evaluate``
  take it as they take a ``.ckpt``; ``nar export`` (``nar.workflows.export``) writes one consolidated file.

Checkpoints: ``checkpoints/<name>.ckpt`` is a small manifest (Lightning's metadata, the run config, an empty
``state_dict`` and a ``sharded`` entry naming the shard folder ``checkpoints/sharded/<name>-<token>/`` and its
files with their sizes). The folder is Lightning's sharded layout (``torch.distributed.checkpoint`` files, one
per rank, plus ``meta.pt``). Every process writes its shard into ``sharded/.<name>-<token>.tmp``; rank 0 then
renames the folder and writes the manifest atomically (:mod:`nar.atomic`), so the manifest is the commit: a
checkpoint is complete or absent, and ``last.ckpt`` is replaced in one rename (a folder could not be). The
folder a replaced manifest pointed to, and temporary folders of killed saves, are removed by the next save.
Resume (``nar.runs.folder``) finds the manifests as it finds ``.ckpt`` files, by content; any number of
processes can resume a sharded checkpoint (``torch.distributed.checkpoint`` reshards). A resume may turn the
EMA off (the saved EMA is not read) or on (:meth:`ShardedStrategy.load_checkpoint` starts it from the resumed shards).

Precision: by default the weights are float32 everywhere and bf16 comes from Lightning's autocast, so every
all-gather moves float32 weights and every reduce-scatter float32 gradients. ``trainer.fsdp_param_dtype: bf16``
(FSDP2's ``MixedPrecisionPolicy``, :func:`fsdp_mixed_precision`) gathers the weights in bf16 and, unless
``trainer.fsdp_reduce_dtype: fp32``, reduces the gradients in bf16: half the bytes, as the official
``train_c2i_fsdp.py``'s ``MixedPrecision(param_dtype=bf16, reduce_dtype=bf16)``. FSDP2 keeps the sharded
parameters in their own dtype (float32) and hands back float32 gradient shards, so the optimizer step and its
AdamW moments, the clipping norm, the EMA (local float32 shards), the checkpoints and the gathered evaluation copy
(``full_tensor`` of the float32 shards) are float32 as without it. Only the root casts its inputs (FSDP1's default,
which the official script runs with): a block's inputs include the rotary table, which stays float32. The policy
applies under bf16 autocast only (``bf16-mixed``); a CPU run, whose ``bf16-mixed`` falls back to ``32-true``,
shards in float32.

Memory: training holds parameters, gradients and AdamW moments sharded (16 bytes per parameter in float32
/ world size) plus the EMA copy sharded (4 bytes / world size). Validation gathers the EMA weights (or the
trained ones without EMA) once, into a plain float32 model on every rank: 4 bytes per parameter, 3.3 GB for
NAR-XL (816M), 5.8 GB for NAR-XXL (1.46B), freed when the validation ends; the sampler then runs on it
unchanged (KV cache, compiled decode step). Sampling through the sharded module instead would all-gather
every block at every decoding pass of every chunk (31 passes for 16x16 with CFG), for a saving that does not
matter at these sizes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.strategies.fsdp import _distributed_checkpoint_save
from lightning.fabric.strategies.model_parallel import _load_checkpoint
from lightning.fabric.utilities.load import _METADATA_FILENAME
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from nar.atomic import TMP_SUFFIX, write_with
from nar.model import NARModel
from nar.model.io import SHARDED_KEY, SHARDS_DIR, read_generator_file, sharded_folder

if TYPE_CHECKING:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from nar.runs.config import TrainerConfig

log = logging.getLogger(__name__)

FORMAT = "torch.distributed.checkpoint"
# The values of trainer.fsdp_param_dtype / fsdp_reduce_dtype (null: no cast)
FSDP_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def is_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``module``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a ``DTensor`` (a view: in-place ops write the shard); a plain tensor as is."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a ``DTensor`` (an all-gather: every rank must call it); a plain tensor as is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def fsdp_mixed_precision(trainer: TrainerConfig) -> MixedPrecisionPolicy:
    """FSDP2's mixed precision from ``trainer.fsdp_param_dtype`` and ``trainer.fsdp_reduce_dtype``: the dtype of
    the gathered weights and of the gradient reduction (a null reduce dtype follows the param dtype, in FSDP2 as
    in the official script's ``--grad-precision``). Both null: no cast, float32 collectives."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    param, reduce = trainer.fsdp_param_dtype, trainer.fsdp_reduce_dtype
    return MixedPrecisionPolicy(param_dtype=FSDP_DTYPES[param] if param else None,
                                reduce_dtype=FSDP_DTYPES[reduce] if reduce else None)


@torch.no_grad()
def gather_full_model(model: NARModel) -> NARModel:
    """A plain (unsharded) eval-mode copy of a sharded ``model`` on every rank, on ``model``'s device.

    Collective: every rank calls it at the same point. Costs 4 bytes per parameter (float32) on each rank;
    the buffers (rotary table, masks) are shared with ``model``, not copied.
    """
    with torch.device("meta"):  # no allocation, no random init: every tensor is assigned below
        copy = NARModel(model.cfg)
    for name, param in model.named_parameters():
        owner, _, attr = name.rpartition(".")
        setattr(copy.get_submodule(owner), attr, nn.Parameter(full(param.detach()), requires_grad=False))
    for name, buf in model.named_buffers():
        owner, _, attr = name.rpartition(".")
        copy.get_submodule(owner)._buffers[attr] = buf
    return copy.eval()


class ShardedStrategy(ModelParallelStrategy):
    """FSDP2 over every process (see the module docstring): sharded training, clipping, EMA and checkpoints.

    ``block_types``: the module classes that become their own FSDP unit (the transformer blocks), so that one
    block's full weights exist at a time in the forward and backward passes. ``mp_policy``: the dtypes FSDP
    gathers and reduces in (:func:`fsdp_mixed_precision`; None: float32), applied under bf16 autocast only.
    """

    def __init__(self, world_size: int, block_types: set[type] | tuple[type, ...] = (),
                 mp_policy: MixedPrecisionPolicy | None = None) -> None:
        super().__init__(data_parallel_size=world_size, tensor_parallel_size=1, save_distributed_checkpoint=True)
        self.block_types = tuple(block_types)
        self.mp_policy = mp_policy

    # ------------------------------------------------------------------------------ sharding
    def shard(self, module: nn.Module) -> None:
        """``fully_shard`` every block of ``module``, then ``module`` itself, on the data-parallel mesh.
        Parameters become ``DTensor`` shards (moved to the mesh's device); names and state-dict keys stay."""
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        policy = self.mixed_precision()
        # A block's inputs include the float32 rotary table: only the root casts its inputs (FSDP1's default)
        block_policy = dataclasses.replace(policy, cast_forward_inputs=False)
        blocks = [m for m in module.modules() if self.block_types and isinstance(m, self.block_types)]
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=block_policy)
        fully_shard(module, mesh=mesh, mp_policy=policy)

    def mixed_precision(self) -> MixedPrecisionPolicy:
        """``mp_policy`` where the run computes under bf16 autocast; otherwise (a CPU run, whose ``bf16-mixed``
        falls back to ``32-true``) no cast, as bf16 weights without autocast would run the whole forward in bf16."""
        from lightning.pytorch.plugins.precision import MixedPrecision
        from torch.distributed.fsdp import MixedPrecisionPolicy

        policy = self.mp_policy or MixedPrecisionPolicy()
        if torch.bfloat16 not in (policy.param_dtype, policy.reduce_dtype):
            return policy
        plugin = self.precision_plugin
        if isinstance(plugin, MixedPrecision) and plugin.precision == "bf16-mixed":
            return policy
        log.info("trainer.fsdp_param_dtype/fsdp_reduce_dtype bf16 without bf16 autocast (precision %s): FSDP "
                 "gathers and reduces in float32", getattr(plugin, "precision", type(plugin).__name__))
        return MixedPrecisionPolicy()

    # ------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """Every rank writes its shard; rank 0 commits the folder and the manifest ``filepath`` (see module doc)."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        manifest = Path(self.broadcast(str(filepath)))
        name = self.broadcast(f"{manifest.stem}-{uuid.uuid4().hex[:8]}")
        shards = manifest.parent / SHARDS_DIR
        tmp = shards / f".{name}{TMP_SUFFIX}"
        if self.global_rank == 0:
            remove_stale_shard_folders(shards)
            tmp.mkdir(parents=True)
        self.barrier()
        state = {"state_dict": checkpoint.pop("state_dict")}
        state.update({f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))})
        _distributed_checkpoint_save(state, tmp)  # returns once every rank's file is written (and fsynced)
        self.barrier()
        if self.global_rank == 0:
            commit_sharded(checkpoint, tmp, shards / name, manifest, world_size=self.world_size)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Load a manifest's shard folder (checked complete), or a plain ``.ckpt`` / Lightning shard folder."""
        path = Path(self.broadcast(str(checkpoint_path)))
        target = path
        if path.is_file():
            target = sharded_folder(read_generator_file(path), path) or path
        state = {"state_dict": self.model, **{f"optimizer_{i}": opt for i, opt in enumerate(self.optimizers)}}
        module = self.lightning_module
        ema = getattr(module, "ema_model", None)
        # A run that turns the EMA on at a resume: the loader reads exactly the module's keys, so the EMA copy sits
        # out of the load, then starts from the resumed weights (both sharded alike: a copy of matching local
        # shards), as GeneratorModule.on_load_checkpoint starts it for an unsharded run.
        start_ema = ema is not None and target.is_dir() and not _saved_keys(target, "state_dict.ema_model.")
        with without_submodule(module, "ema_model") if start_ema else contextlib.nullcontext():
            # meta.pt holds our own loop and callback states: read it whole (weights_only=False), as for .ckpt files
            metadata = _load_checkpoint(path=target, state=state, strict=module.strict_loading,
                                        optimizer_states_from_list=True, weights_only=False if weights_only is None
                                        else weights_only)
        if start_ema:
            log.info("ema.enabled=true but the checkpoint has no EMA (its run had ema.enabled=false): the EMA starts "
                     "from the resumed weights")
            with torch.no_grad():
                pairs = zip([*ema.parameters(), *ema.buffers()], [*module.model.parameters(), *module.model.buffers()],
                            strict=True)  # a deep copy of the model, sharded by the same rule: tensor for tensor
                for e, w in pairs:
                    local(e).copy_(local(w.detach()))
        return metadata

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.global_rank != 0:
            return
        path = Path(filepath)
        folder = _pointed_folder(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def commit_sharded(metadata: dict[str, Any], tmp: Path, folder: Path, manifest: Path, world_size: int) -> Path:
    """Make the completely written shard folder ``tmp`` a checkpoint: write ``meta.pt`` into it (Lightning's
    layout), rename it to ``folder``, then atomically write ``manifest`` pointing at it and remove the folder
    the manifest it replaces pointed to. One process (rank 0) calls this, after every shard is written."""
    write_with(tmp / _METADATA_FILENAME, lambda p: torch.save(metadata, p))
    files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
    os.replace(tmp, folder)
    _fsync_dir(folder.parent)
    previous = _pointed_folder(manifest)
    entry = {"folder": folder.relative_to(manifest.parent).as_posix(), "files": files, "world_size": world_size,
             "format": FORMAT}
    write_with(manifest, lambda p: torch.save({**metadata, "state_dict": {}, SHARDED_KEY: entry}, p))
    if previous is not None and previous.resolve() != folder.resolve():
        shutil.rmtree(previous, ignore_errors=True)
    return folder


def remove_stale_shard_folders(shards: Path) -> list[Path]:
    """Delete the ``.<name>.tmp`` shard folders of saves that never completed (killed mid-write); the run-folder
    lock makes sure no other save of this run is in progress."""
    removed = []
    for tmp in shards.glob(f".*{TMP_SUFFIX}") if shards.is_dir() else ():
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    if removed:
        log.info("removed %d incomplete shard folder(s) of killed saves: %s", len(removed),
                 ", ".join(p.name for p in removed))
    return removed


def _saved_keys(folder: Path, prefix: str) -> list[str]:
    """The keys of the ``torch.distributed.checkpoint`` folder ``folder`` that start with ``prefix`` (its
    metadata file only: no tensor is read)."""
    from torch.distributed.checkpoint import FileSystemReader

    return [k for k in FileSystemReader(folder).read_metadata().state_dict_metadata if k.startswith(prefix)]


@contextlib.contextmanager
def without_submodule(module: nn.Module, name: str):
    """``module`` with its submodule ``name`` taken out (out of its state dict and parameters) for the block."""
    child = module._modules.pop(name)
    try:
        yield
    finally:
        module._modules[name] = child


def _pointed_folder(manifest: Path) -> Path | None:
    """The shard folder ``manifest`` names (None: no manifest, unreadable, or a plain checkpoint)."""
    if not manifest.is_file():
        return None
    try:
        entry = read_generator_file(manifest).get(SHARDED_KEY)
    except Exception:  # noqa: BLE001 - an unreadable old manifest: nothing to clean up
        return None
    return manifest.parent / entry["folder"] if entry else None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
