"""Sharded training (``trainer.strategy: fsdp``, FSDP2) on this CPU: two gloo processes, the NAR-XL config shrunk
to a tiny trunk, killed with SIGKILL after a validation and a sharded save, resumed, finished; compared with an
uninterrupted one-process (unsharded) run of the same global batch.

Every training sample is the same grid, so every batch is the same whatever the sampling: a two-process batch
of 2 x 4 equals the one-process batch of 8, and the resumed run's batches equal an uninterrupted run's even
though the data stream restarts after a resume (continuing at the exact sample is the data readers' part).
Dropout and condition dropout are off: their masks are drawn per process. Tolerance: 2e-5 on losses and
gradient norms, 1e-4 on weights (two half-batch gradients averaged by the gloo reduce-scatter vs. one batch:
float32 sums in another order, through eight AdamW steps); measured: 5e-7 (loss), 1.2e-6 (gradient norm),
7e-6 (weights and EMA), val/loss equal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning_helpers import write_token_shards

from nar.lightning.logs import read_metrics, read_scalars
from nar.model.io import SHARDED_KEY, load_generator, sharded_folder

ROOT = Path(__file__).resolve().parents[2]
XL = ROOT / "experiments" / "imagenet" / "nar_xl.yaml"
NAR = [sys.executable, "-m", "nar.cli.main"]
LOSS_TOL, WEIGHT_TOL = 2e-5, 1e-4


@pytest.fixture(scope="module")
def one_sample_tokens(tmp_path_factory) -> Path:
    """One training grid (every batch is that grid repeated); 8 validation grids."""
    return write_token_shards(tmp_path_factory.mktemp("tokens1"), grid=(8, 8), train=1, val=8)


def xl_overrides(root: Path, runs: Path, tokenizer: Path, name: str, **extra) -> list[str]:
    """nar_xl.yaml shrunk to a seconds-long CPU run (2 blocks of width 64); EMA and fsdp as in the YAML, the clip
    lowered to 0.25 so that it acts at every step of this model (its gradient norms are 0.5-1.5)."""
    base = {
        "name": name, "runs_root": str(runs), "data.root": str(root), "data.global_batch": 8, "data.num_workers": 0,
        "data.shuffle_buffer": 8, "data.eval_batch_size": 4, "data.limit_val_samples": 8,
        "model.dim": 64, "model.n_layer": 2, "model.n_head": 4, "model.vocab_size": 512, "model.grid": "[8,8]",
        "model.num_classes": 4, "model.token_dropout": 0, "model.resid_dropout": 0, "model.ffn_dropout": 0,
        "optim.cond_dropout": 0, "optim.grad_clip": 0.25, "optim.lr": 3e-3, "ema.decay": 0.9, "tokenizer.path": str(tokenizer),
        "trainer.accelerator": "cpu", "trainer.precision": "32-true", "trainer.compile": "false",
        "trainer.devices": 2, "trainer.max_steps": 8, "trainer.val_every": 4, "trainer.ckpt_every": 4,
        "trainer.log_every": 1, "trainer.threads": 1, "eval.num_samples": 8, "eval.batch_size": 4,
        "eval.grid_samples": 8, "eval.metrics": "[fid]", "allow_degraded": "true",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: list[str], logs: Path, world: int = 2) -> list[subprocess.Popen]:
    """``nar <args>`` as ``world`` ranks started together, as torchrun starts them (rank 0 spawning the others is
    Lightning's own launcher, tested by test_ddp), each in its own process group (its children included)."""
    port, procs = _free_port(), []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "NODE_RANK": "0"}
        with open(logs / f"rank{rank}.log", "wb") as err:
            procs.append(subprocess.Popen([*NAR, *args], env=env, stdout=subprocess.DEVNULL, stderr=err,
                                          start_new_session=True))
    return procs


def stderr_of(logs: Path) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text()[-3000:]}" for f in sorted(logs.glob("rank*.log")))


def finish(procs: list[subprocess.Popen], logs: Path, timeout: float = 300) -> None:
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        kill(procs)
    assert codes == [0] * len(procs), stderr_of(logs)


def kill(procs: list[subprocess.Popen]) -> None:
    """SIGKILL every rank at once (a node lost): ``kill -9`` of each rank's process group."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()


def kill_when(procs: list[subprocess.Popen], ready, logs: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    try:
        while not ready():
            assert all(p.poll() is None for p in procs), stderr_of(logs)
            assert time.time() < deadline, f"not ready within {timeout} s\n{stderr_of(logs)}"
            time.sleep(0.05)
    finally:
        kill(procs)


def _curve(run: Path, tag: str) -> dict[int, float]:
    return dict(read_scalars(run, tag)[tag])  # a step logged before the kill and again after it: the later value


def test_two_process_fsdp_kill_resume_equals_one_process(one_sample_tokens: Path, tokenizer_file: Path,
                                                        tmp_path: Path) -> None:
    from nar.workflows.train import fit, generator_config

    over = xl_overrides(one_sample_tokens, tmp_path, tokenizer_file, "fsdp")
    run = tmp_path / "fsdp"
    ckpts = run / "checkpoints"

    # 1. Two processes: 4 steps, validation (frontier decoding + FID), sharded save; then SIGKILL to both ranks.
    logs = tmp_path / "first"
    logs.mkdir()
    kill_when(launch(["train", "--config", str(XL), *over], logs), lambda: (ckpts / "step_0000004.ckpt").is_file()
              and any(r["step"] == 4 for r in read_metrics(run)), logs)
    manifest = torch.load(ckpts / "step_0000004.ckpt", map_location="cpu", weights_only=False)
    shards = sharded_folder(manifest, ckpts / "step_0000004.ckpt")
    assert manifest["global_step"] == 4 and manifest["state_dict"] == {}
    assert sorted(p.name for p in shards.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert manifest[SHARDED_KEY]["world_size"] == 2

    # 2. Resume (from the newest intact manifest) and finish.
    logs = tmp_path / "resumed"
    logs.mkdir()
    finish(launch(["train", "--config", str(XL), *over, "--resume"], logs), logs)
    assert "(step 4)" in (logs / "rank0.log").read_text()  # resumed from the step-4 checkpoint, not from scratch
    assert not list((ckpts / "sharded").glob(".*.tmp")), "a killed save's temporary folder was left behind"
    rows = {r["step"]: r for r in read_metrics(run)}
    assert {4, 8} <= set(rows) and all(rows[s]["val/fid"] > 0 for s in (4, 8))

    # 3. One process, unsharded, the same global batch (8), no interruption.
    ref_over = xl_overrides(one_sample_tokens, tmp_path, tokenizer_file, "one", **{
        "trainer.devices": 1, "trainer.strategy": "auto", "trainer.val_every": 0,
        "eval.metrics": "[]"})  # val/loss (compared below) and samples; its FID would cost 20 s
    ref = fit(generator_config([XL], ref_over), final_validation=True, enable_progress_bar=False)
    one = tmp_path / "one"

    for tag in ("train/loss", "train/grad_norm"):
        sharded, plain = _curve(run, tag), _curve(one, tag)
        assert sorted(sharded) == sorted(plain) == list(range(8)), (tag, sorted(sharded))
        for step in plain:
            assert sharded[step] == pytest.approx(plain[step], abs=LOSS_TOL), (tag, step, sharded[step], plain[step])
    assert min(_curve(one, "train/grad_norm").values()) > 0.25  # the clip acted at every step

    # Final weights: the trained ones and the EMA copy, read from the sharded manifest.
    for ema in (False, True):
        mine = load_generator(ckpts / "last.ckpt", prefer_ema=ema).state_dict()
        theirs = load_generator(one / "checkpoints" / "last.ckpt", prefer_ema=ema).state_dict()
        worst = max((mine[k] - theirs[k]).abs().max().item() for k in theirs)
        assert worst < WEIGHT_TOL, (ema, worst)
    # Validation on the gathered EMA weights scores like the unsharded run (same samples, same val set).
    assert rows[8]["val/loss"] == pytest.approx(ref["metrics"]["val/loss"], abs=LOSS_TOL)


CAPTION_DROP = """
import sys
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from nar.lightning.generator_module import _drop_condition
from nar.model import NARConfig, NARModel

dist.init_process_group("gloo")
rank = dist.get_rank()
cfg = NARConfig(dim=32, n_layer=1, n_head=2, vocab_size=64, grid=[4, 4], condition="caption", caption_len=6,
                caption_dim=8, token_dropout=0.0, resid_dropout=0.0, ffn_dropout=0.0, drop_path=0.0)
torch.manual_seed(0)
plain, sharded = NARModel(cfg), NARModel(cfg)
for head in plain.heads:  # non-zero heads: every weight gets a gradient
    torch.nn.init.normal_(head.proj.weight, std=0.1)
sharded.load_state_dict(plain.state_dict())
for m in (plain, sharded):
    m.register_forward_pre_hook(_drop_condition, with_kwargs=True)
mesh = init_device_mesh("cpu", (2,))
for block in sharded.blocks():
    fully_shard(block, mesh=mesh)
fully_shard(sharded, mesh=mesh)
g = torch.Generator().manual_seed(1)
tokens, feats = torch.randint(0, 64, (4, 16), generator=g), torch.randn(4, 6, 8, generator=g)
drop = torch.tensor([True, False, True, False])
def loss(model, rows):
    logits = model(tokens[rows], feats[rows], None, drop=drop[rows])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, 64), tokens[rows].reshape(-1))
loss(sharded, slice(2 * rank, 2 * rank + 2)).backward()  # this rank's half of the batch
loss(plain, slice(0, 4)).backward()  # the whole batch
mine = sharded.cls_embedding.uncond_embedding.grad.full_tensor()
ref = plain.cls_embedding.uncond_embedding.grad
assert ref.abs().max() > 1e-4, ref.abs().max()
assert (mine - ref).abs().max() < 1e-6, (mine - ref).abs().max()
print("ok", rank)
"""


@pytest.mark.slow  # ~35 s on this CPU (torchrun and two processes importing Lightning)
def test_caption_dropout_under_fsdp_trains_the_null_caption(tmp_path: Path) -> None:
    """The t2i config's caption dropout: the learned null caption is a sharded parameter outside the forward, so
    the dropout runs in a pre-hook inside it; its gradient over two ranks equals the one-process gradient."""
    script = tmp_path / "caption_drop.py"
    script.write_text(CAPTION_DROP)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           f"--master_port={_free_port()}", str(script)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.count("ok") == 2, done.stdout[-2000:] + done.stderr[-4000:]


def test_fsdp_configs_get_the_sharded_strategy(tmp_path: Path) -> None:
    from nar.errors import ConfigError
    from nar.lightning.sharding import ShardedStrategy
    from nar.lightning.trainer import strategy_for
    from nar.model.layers import Block
    from nar.workflows.train import generator_config

    for yaml in (XL, XL.with_name("nar_xxl.yaml"), ROOT / "experiments" / "t2i" / "nar_xl.yaml"):
        cfg = generator_config([yaml], [f"runs_root={tmp_path}", "trainer.devices=8"])
        strategy = strategy_for(cfg, {Block})
        assert isinstance(strategy, ShardedStrategy) and strategy.block_types == (Block,), yaml
        assert cfg.optim.grad_clip == 1.0
        assert not cfg.ema.enabled, yaml  # the official ImageNet FSDP and t2i scripts keep no EMA
        # XXL follows train_c2i_fsdp.py's MixedPrecision (bf16 gathers and reductions); the others reduce in float32
        bf16 = yaml.name == "nar_xxl.yaml" and yaml.parent.name == "imagenet"
        assert strategy.mp_policy.param_dtype == (torch.bfloat16 if bf16 else None), yaml
        assert strategy.mp_policy.reduce_dtype is None, yaml  # follows param_dtype
    with pytest.raises(ConfigError, match="trainer.precision"):
        strategy_for(generator_config([XL], [f"runs_root={tmp_path}", "trainer.precision=16-mixed",
                                             "trainer.accelerator=gpu"]))


@pytest.mark.slow  # ~25 s on this CPU: two one-process sharded fits (gloo)
def test_a_sharded_run_may_turn_the_ema_on_at_a_resume(token_root: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    """A sharded run trained without an EMA resumes with ema.enabled=true: the checkpoint holds no EMA keys, so
    the EMA sits out of the load and starts from the resumed (sharded) weights, as the unsharded path starts it;
    one step later it is one EMA step (1 - decay) from the step-2 weights towards the step-3 weights."""
    import logging

    from lightning_helpers import tiny_overrides

    from nar.model.io import read_generator_file, read_sharded_weights
    from nar.workflows import train

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # the one-process group, restored after the test
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    decay = 0.9999
    over = tiny_overrides(token_root, tmp_path, name="flip", **{
        "trainer.max_steps": 2, "trainer.ckpt_every": 2, "eval.metrics": "[]", "eval.num_samples": 4,
        "ema.decay": decay, "ema.warmup": "false", "model.n_layer": 1, "trainer.strategy": "fsdp",
        "trainer.devices": 1})
    ckpts = tmp_path / "flip" / "checkpoints"

    def weights(name: str, ema: bool) -> tuple[dict[str, torch.Tensor], str]:
        return read_sharded_weights(sharded_folder(read_generator_file(ckpts / name), ckpts / name), prefer_ema=ema)

    try:
        train.fit(train.generator_config([], [*over, "ema.enabled=false"]), enable_progress_bar=False,
                  final_validation=False)
        assert weights("last.ckpt", ema=True)[1] == "model."  # no EMA saved
        with caplog.at_level(logging.INFO, logger="nar"):
            done = train.fit(train.generator_config([], [*over, "ema.enabled=true", "trainer.max_steps=3"]),
                             resume=True, enable_progress_bar=False, final_validation=False)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    assert done["global_step"] == 3
    assert "the EMA starts from the resumed weights" in caplog.text
    before, _ = weights("step_0000002.ckpt", ema=False)
    after, _ = weights("last.ckpt", ema=False)
    ema, prefix = weights("last.ckpt", ema=True)
    assert prefix == "ema_model." and set(ema) == set(after)
    for k, w in before.items():
        if w.is_floating_point():
            assert torch.allclose(ema[k], w + (1 - decay) * (after[k] - w), atol=1e-6), k
    assert max((after[k] - w).abs().max().item() for k, w in before.items() if w.is_floating_point()) > 1e-3


# --------------------------------------------------------------------------------------------------
# trainer.fsdp_param_dtype / trainer.fsdp_reduce_dtype: FSDP2's MixedPrecisionPolicy
# --------------------------------------------------------------------------------------------------

TINY = {"dim": 32, "n_layer": 2, "n_head": 2, "vocab_size": 64, "grid": [4, 4], "num_classes": 4,
        "token_dropout": 0.0, "resid_dropout": 0.0, "ffn_dropout": 0.0}


def test_fsdp_dtype_keys_are_checked_and_any_precision_loads() -> None:
    """The keys take null, bf16 or fp32, named when wrong. Any precision loads with them (a recipe with bf16
    collectives evaluated or tried in 32-true): without bf16 autocast the strategy shards in float32 (the next test)."""
    from nar.config import load_config
    from nar.errors import ConfigError
    from nar.runs import TrainConfig

    base = ["data.root=x", "trainer.strategy=fsdp"]
    cfg = load_config(TrainConfig, [], [*base, "trainer.fsdp_param_dtype=bf16", "trainer.fsdp_reduce_dtype=fp32"])
    assert (cfg.trainer.fsdp_param_dtype, cfg.trainer.fsdp_reduce_dtype) == ("bf16", "fp32")
    assert TrainConfig().trainer.fsdp_param_dtype is None and TrainConfig().trainer.fsdp_reduce_dtype is None
    for key in ("fsdp_param_dtype", "fsdp_reduce_dtype"):
        with pytest.raises(ConfigError, match=rf"trainer\.{key}"):
            load_config(TrainConfig, [], [*base, f"trainer.{key}=fp16"])
    for precision in ("32-true", "bf16-true"):
        load_config(TrainConfig, [], [*base, f"trainer.precision={precision}", "trainer.fsdp_param_dtype=bf16"])


def test_fsdp_policy_from_config_reaches_every_fully_shard(monkeypatch) -> None:
    """The policy of the trainer keys is passed to each block's and the root's fully_shard; the blocks do not cast
    their inputs (the rotary table stays float32, as FSDP1's default cast of the root's inputs only); a run without
    bf16 autocast (a CPU run falls back to 32-true) shards in float32."""
    import torch.distributed.fsdp as fsdp
    from lightning.pytorch.plugins.precision import MixedPrecision, Precision

    from nar.lightning.sharding import ShardedStrategy, fsdp_mixed_precision
    from nar.model import NARConfig, NARModel
    from nar.model.layers import Block
    from nar.runs.config import TrainerConfig

    calls = []
    monkeypatch.setattr(fsdp, "fully_shard", lambda module, **kw: calls.append((module, kw)))
    model = NARModel(NARConfig(**TINY))
    blocks = [m for m in model.modules() if isinstance(m, Block)]

    def shard(trainer: TrainerConfig, precision) -> list:
        calls.clear()
        strategy = ShardedStrategy(1, {Block}, mp_policy=fsdp_mixed_precision(trainer))
        strategy._device_mesh = {"data_parallel": "mesh"}
        strategy.precision_plugin = precision
        strategy.shard(model)
        assert [m for m, _ in calls] == [*blocks, model] and all(kw["mesh"] == "mesh" for _, kw in calls)
        return [kw["mp_policy"] for _, kw in calls]

    autocast = MixedPrecision("bf16-mixed", "cpu")
    policies = shard(TrainerConfig(strategy="fsdp", fsdp_param_dtype="bf16"), autocast)
    assert {(p.param_dtype, p.reduce_dtype) for p in policies} == {(torch.bfloat16, None)}  # reduce follows: bf16
    assert [p.cast_forward_inputs for p in policies] == [False] * len(blocks) + [True]
    policies = shard(TrainerConfig(strategy="fsdp", fsdp_param_dtype="bf16", fsdp_reduce_dtype="fp32"), autocast)
    assert {(p.param_dtype, p.reduce_dtype) for p in policies} == {(torch.bfloat16, torch.float32)}
    for trainer, precision in ((TrainerConfig(strategy="fsdp"), autocast),
                               (TrainerConfig(strategy="fsdp", fsdp_param_dtype="bf16"), Precision())):
        assert {(p.param_dtype, p.reduce_dtype) for p in shard(trainer, precision)} == {(None, None)}


def test_bf16_fsdp_computes_in_bf16_and_keeps_float32_weights_grads_and_moments(monkeypatch) -> None:
    """One gloo process, the real fully_shard with fsdp_param_dtype=bf16 under CPU bf16 autocast: the blocks compute
    with bf16 weights but rotate with the float32 rotary table; the sharded weights, their gradients (reduced in
    bf16, handed back in float32), the AdamW moments, the state dict (what checkpoints hold) and the gathered
    evaluation copy are float32."""
    import torch.distributed as dist
    from lightning.pytorch.plugins.precision import MixedPrecision
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    import nar.model.layers as layers
    from nar.lightning.sharding import ShardedStrategy, fsdp_mixed_precision, gather_full_model
    from nar.model import NARConfig, NARModel
    from nar.runs.config import TrainerConfig

    ropes, weights = [], []
    rotate = layers.apply_rotary
    monkeypatch.setattr(layers, "apply_rotary", lambda x, rope: ropes.append(rope.dtype) or rotate(x, rope))
    torch.manual_seed(0)
    model = NARModel(NARConfig(**TINY))
    blocks = list(model.blocks())  # the trunk's and the heads' blocks
    for block in blocks:
        block.attention.wqkv.register_forward_pre_hook(lambda m, args: weights.append(m.weight.dtype))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        strategy = ShardedStrategy(1, {layers.Block}, mp_policy=fsdp_mixed_precision(
            TrainerConfig(strategy="fsdp", fsdp_param_dtype="bf16")))
        strategy._device_mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
        strategy.precision_plugin = MixedPrecision("bf16-mixed", "cpu")
        strategy.shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        tokens = torch.randint(0, TINY["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(1))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(tokens, torch.tensor([0, 1]))
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens.flatten()).backward()
        opt.step()
        assert weights == [torch.bfloat16] * len(blocks) and ropes == [torch.float32] * len(blocks)
        params = list(model.parameters())
        assert all(isinstance(p, DTensor) and p.dtype == torch.float32 for p in params)
        assert all(p.grad.dtype == torch.float32 for p in params)
        assert {s[k].dtype for s in opt.state.values() for k in ("exp_avg", "exp_avg_sq")} == {torch.float32}
        assert {v.dtype for v in model.state_dict().values() if v.is_floating_point()} == {torch.float32}
        assert {p.dtype for p in gather_full_model(model).parameters()} == {torch.float32}
    finally:
        dist.destroy_process_group()
