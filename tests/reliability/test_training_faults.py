"""Fault injection on training, evaluation and sampling, as a user's cluster injects faults.

Each test reproduces cases of the reliability report on a seconds-long CPU run and asserts what a user must
be able to count on: no truncated file under a final name, a resume that continues from the newest intact
state with the right step, nothing of a finished checkpoint lost, one message naming the file or key, and a
distinct exit code (2: fix the input, 1: failure at run time, 75: stopped by a signal, checkpoint saved).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nar.cli.main import main
from nar.errors import EXIT_INTERRUPTED
from nar.runs.folder import intact_checkpoints, read_checkpoint_info, resume_checkpoint
from token_data import write_token_shards

NAR = [sys.executable, "-m", "nar"]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    return write_token_shards(tmp_path_factory.mktemp("tokens"), grid=(4, 4), vocab=64)


def overrides(tokens: Path, runs: Path, name: str = "run", **extra) -> list[str]:
    base = {"name": name, "runs_root": str(runs), "data.root": str(tokens), "data.batch_size": 8,
            "data.num_workers": 0, "data.shuffle_buffer": 16, "model.dim": 32, "model.n_layer": 1, "model.n_head": 2,
            "trainer.accelerator": "cpu", "trainer.precision": "32-true",
            "trainer.max_steps": 10, "trainer.val_every": 0, "trainer.ckpt_every": 5, "trainer.log_every": 1,
            "trainer.threads": 1, "eval.metrics": "[]", "eval.num_samples": 2, "eval.batch_size": 2}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


def stop(proc: subprocess.Popen, signum: int, timeout: float = 120) -> tuple[int, str]:
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 1.5 MB tmpfs: room for a run's logs, not for a checkpoint (a full disk on demand)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): the full-disk case needs one")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_signals_lock_and_moved_folder(tokens: Path, tmp_path: Path, caplog) -> None:
    """Ctrl-C and a cluster's SIGTERM save a resumable checkpoint (exit 75); a second trainer on the folder is
    refused naming the first; a copied folder resumes from its newest state, saving under the same names. The
    runs that take a signal are processes of their own; the others are the CLI's main in this process."""
    runs = tmp_path / "runs"
    run = runs / "run"
    long = overrides(tokens, runs, **{"trainer.max_steps": 100000, "trainer.ckpt_every": 100000})
    first = subprocess.Popen([*NAR, "train", *long], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_for(run / "config.yaml", first)  # written once training runs (and the signal handlers are in)
        # 3. a second trainer on the same run folder is refused, naming the holder (a few steps at most if not)
        assert main(["train", *overrides(tokens, runs, **{"trainer.max_steps": 1}), "--resume"]) == 2
        assert "locked by another process" in caplog.text and f"pid {first.pid}" in caplog.text, caplog.text
        time.sleep(1.0)
        # 2. Ctrl-C: a checkpoint at the next step boundary, a distinct exit code
        code, err = stop(first, signal.SIGINT)
    finally:
        if first.poll() is None:
            first.kill()
    assert code == EXIT_INTERRUPTED, err[-3000:]
    assert "stopped by SIGINT" in err and "--resume" in err
    step = read_checkpoint_info(run / "checkpoints" / "last.ckpt").step
    assert step > 0

    # SIGTERM (preemption) of the resumed run: again saved, later step
    config = run / "config.yaml"
    before = config.stat().st_mtime_ns
    again = subprocess.Popen([*NAR, "train", *long, "--resume"], env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while config.stat().st_mtime_ns == before:  # rewritten when the resumed run starts training
            assert again.poll() is None and time.time() < deadline, again.stderr.read()[-3000:]
            time.sleep(0.05)
        time.sleep(1.5)
        code, err = stop(again, signal.SIGTERM)
    finally:
        if again.poll() is None:
            again.kill()
    assert code == EXIT_INTERRUPTED, err[-3000:]
    assert "stopped by SIGTERM" in err
    later = read_checkpoint_info(run / "checkpoints" / "last.ckpt").step
    assert later > step

    # 5. a copied run folder: the resume continues from its newest state and saves last.ckpt, not last-v1.ckpt
    copy = tmp_path / "moved"
    shutil.copytree(runs, copy)
    assert main(["train", *overrides(tokens, copy, **{"trainer.max_steps": later + 3, "trainer.ckpt_every": 100000}),
                 "--resume"]) == 0
    names = sorted(p.name for p in (copy / "run" / "checkpoints").iterdir())
    assert not [n for n in names if "-v" in n], names
    newest = resume_checkpoint(copy / "run")
    assert newest is not None and newest.step == later + 3


def test_full_disk_truncated_files_and_resume(tokens: Path, tmp_path: Path, small_fs: Path, caplog) -> None:
    """1. A checkpoint that does not fit fails with the file named and leaves no partial file under its name; a
    truncated checkpoint (an old writer killed mid-save) is skipped by name and the resume takes the newest intact.
    No signal is sent, so the runs are the CLI's main in this process (each subprocess cost ~8 s of imports)."""
    runs = small_fs
    assert main(["train", *overrides(tokens, runs, **{"trainer.max_steps": 5, "trainer.ckpt_every": 5})]) == 1
    assert "no space left" in caplog.text and "Traceback" not in caplog.text, caplog.text[-3000:]
    ckpts = runs / "run" / "checkpoints"
    assert str(ckpts) in caplog.text  # the message names the file that did not fit
    good, bad = intact_checkpoints(runs / "run")
    assert not bad and not list(ckpts.glob(".*.tmp")), sorted(p.name for p in ckpts.iterdir())

    runs = tmp_path / "runs"
    assert main(["train", *overrides(tokens, runs, **{"trainer.max_steps": 10, "trainer.ckpt_every": 5})]) == 0
    ckpts = runs / "run" / "checkpoints"
    last = ckpts / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])  # what a kill mid-write of a non-atomic writer leaves
    shutil.copy(ckpts / "step_0000005.ckpt", ckpts / "step_0000099.ckpt")
    (ckpts / "step_0000099.ckpt").write_bytes((ckpts / "step_0000099.ckpt").read_bytes()[:1000])
    good, bad = intact_checkpoints(runs / "run")
    assert [c.step for c in good] == [5, 10] and {p.name for p, _ in bad} == {"last.ckpt", "step_0000099.ckpt"}
    caplog.clear()
    caplog.set_level(logging.INFO)  # the resume names the step it continues from at INFO
    assert main(["train", *overrides(tokens, runs, **{"trainer.max_steps": 12, "trainer.ckpt_every": 100}),
                 "--resume"]) == 0
    assert "skipping" in caplog.text and "last.ckpt" in caplog.text and "step 10" in caplog.text, caplog.text
    assert read_checkpoint_info(last).step == 12


def test_failed_resume_leaves_the_config(tokens: Path, tmp_path: Path) -> None:
    """5. A resume into a differently shaped model is refused before anything is written, naming the keys."""
    runs = tmp_path / "runs"
    assert main(["train", *overrides(tokens, runs, **{"trainer.max_steps": 2, "trainer.ckpt_every": 2})]) == 0
    config = (runs / "run" / "config.yaml").read_text()
    assert main(["train", *overrides(tokens, runs, **{"model.dim": 48}), "--resume"]) == 2
    assert (runs / "run" / "config.yaml").read_text() == config


def test_start_time_checks(tokens: Path, tmp_path: Path, caplog) -> None:
    """6. A vocabulary above the tokenizer's codebook and a missing tokenizer file fail at start, naming the key."""
    runs = tmp_path / "runs"
    assert main(["train", *overrides(tokens, runs, **{"tokenizer.path": "vq-tiny-emoji", "model.vocab_size": 1024})]) == 2
    assert "model.vocab_size" in caplog.text
    caplog.clear()
    assert main(["train", *overrides(tokens, runs, **{"tokenizer.path": str(tmp_path / "nope.pt")})]) == 2
    assert "tokenizer.path" in caplog.text
    assert not (runs / "run").exists()  # nothing was started


def test_missing_data_and_metric_networks_fail_at_start(tokens: Path, tmp_path: Path, caplog) -> None:
    """6. A data.root that is no dataset (missing, or without meta.json) and an eval.inception_weights or
    eval.i3d_path naming a missing file fail before anything is made, naming the file or the key, instead of
    after every training step (the networks) or after the run folder was made (the data)."""
    runs = tmp_path / "runs"
    empty = tmp_path / "empty"
    empty.mkdir()
    for root in (tmp_path / "nope", empty):
        assert main(["train", *overrides(root, runs)]) == 2, root
        assert str(root / "meta.json") in caplog.text
        assert not runs.exists()
        caplog.clear()
    for key in ("eval.inception_weights", "eval.i3d_path"):
        missing = tmp_path / f"{key}.pt"
        assert main(["train", *overrides(tokens, runs, **{key: str(missing)})]) == 2, key
        assert key in caplog.text and str(missing) in caplog.text
        assert not runs.exists()
        caplog.clear()


def test_fvd_of_clips_too_short_for_the_i3d_fails_at_start(tokens: Path, tmp_path: Path, caplog) -> None:
    """6. FVD with an I3D on a video tokenizer whose clips are shorter than the I3D takes fails at start, naming
    eval.metrics and both frame counts, instead of at the first decoding validation after training."""
    from nar.metrics.fvd import I3D_MIN_FRAMES
    from nar.tokenizers import VQConfig, VQTokenizer, save_tokenizer

    frames = 4  # below the I3D's minimum, a multiple of the tokenizer's temporal factor 2
    assert frames < I3D_MIN_FRAMES
    cfg = VQConfig(kind="video", image_size=16, num_frames=frames, base_channels=16, encoder_ch_mult=[1, 2, 2],
                   decoder_ch_mult=[1, 2, 2], num_res_blocks=1, z_channels=8, codebook_size=32,
                   codebook_embed_dim=4, norm_groups=8, temporal_downsample=[True, False])
    tokenizer = save_tokenizer(VQTokenizer(cfg), tmp_path / "video_tok.pt")
    i3d = tmp_path / "i3d.pt"
    i3d.write_bytes(b"present")  # only its presence is checked at start
    runs = tmp_path / "runs"
    assert main(["train", *overrides(tokens, runs, **{"tokenizer.path": str(tokenizer), "model.vocab_size": 32,
                                                      "eval.metrics": "[fvd]", "eval.i3d_path": str(i3d)})]) == 2
    assert "eval.metrics" in caplog.text and f"clips of {frames} frames" in caplog.text
    assert f"at least {I3D_MIN_FRAMES}" in caplog.text
    assert not runs.exists()


def test_evaluation_and_sampling_refuse_bad_requests(tokens: Path, tmp_path: Path, caplog) -> None:
    """7. Fewer real samples than asked fail with the counts; zero samples and non-finite guidance are refused;
    6. sampling with a tokenizer whose codebook is smaller than the vocabulary is a usage error."""
    from nar.data.embedded import build_embedded
    from nar.data.shards import read_meta, resolve_split
    from nar.tokenizers import VQConfig, build_tokenizer, save_tokenizer

    runs = tmp_path / "runs"
    assert main(["train", *overrides(tokens, runs, **{"trainer.max_steps": 2, "trainer.ckpt_every": 2,
                                                      "tokenizer.path": "vq-tiny-emoji"})]) == 0
    ckpt = str(runs / "run" / "checkpoints" / "last.ckpt")
    real = build_embedded(tmp_path / "real", only=["emoji"], options={"emoji": {"size": 16, "limit": 30}})
    assert real
    real_root = tmp_path / "real" / "emoji"
    meta = read_meta(real_root)
    held = meta["splits"][resolve_split(meta, "val")]["samples"]
    code = main(["evaluate", "--ckpt", ckpt, "--num-samples", "2", f"eval.real_root={real_root}",
                 "eval.num_real=500", "eval.metrics=[fid]"])
    assert code == 2 and f"500 real samples asked for, but eval.real_root {real_root} holds {held}" in caplog.text
    # a training run is refused before its first step, not at its first decoding validation
    late = tmp_path / "late"
    assert main(["train", *overrides(tokens, late, **{"tokenizer.path": "vq-tiny-emoji", "eval.metrics": "[fid]",
                                                      "eval.real_root": str(real_root),
                                                      "eval.num_samples": held + 1})]) == 2
    assert f"{held + 1} real samples asked for" in caplog.text and "eval.allow_fewer=true" in caplog.text
    assert not late.exists()
    assert main(["evaluate", "--ckpt", ckpt, "--num-samples", "0"]) == 2
    assert main(["sample", "--ckpt", ckpt, "--classes", "1", "--guidance", "nan", "--out", str(tmp_path / "s")]) == 2
    assert "cfg_scale" in caplog.text
    caplog.clear()
    torch.manual_seed(0)
    small = save_tokenizer(build_tokenizer(VQConfig.from_name("vq-tiny-emoji", codebook_size=32)), tmp_path / "small.pt")
    assert main(["sample", "--ckpt", ckpt, "--classes", "1", "--tokenizer", str(small), "--out", str(tmp_path / "s")]) == 2
    assert "codes" in caplog.text


def test_second_interrupt_aborts_at_once() -> None:
    """2. The first SIGINT asks for a save at the next step; a second one does not wait for it."""
    from nar.lightning.callbacks.run_guard import PreemptionCallback

    guard = PreemptionCallback("unused.ckpt")
    guard._handle(signal.SIGINT, None)
    assert guard.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
        guard._handle(signal.SIGINT, None)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_messages_instead_of_tracebacks(tmp_path: Path, caplog) -> None:
    """8. A YAML syntax error, a YAML whose top level is a list, a YAML or prompt file that is not UTF-8, and
    --device cuda without a GPU: one line naming the file or value, exit 2 (read-only folders and full disks:
    test_data_faults.py and test_full_disk_truncated_files_and_resume)."""
    from nar.errors import ConfigError
    from nar.workflows.sample import read_prompts

    files = {"syntax.yaml": b"optim:\n  lr: [1\n", "list.yaml": b"- a\n- b\n", "latin1.yaml": b"name: caf\xe9\n"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        caplog.clear()
        assert main(["train", "--config", str(tmp_path / name), f"runs_root={tmp_path / 'runs'}"]) == 2, name
        assert name in caplog.text and "Traceback" not in caplog.text, caplog.text
    assert not (tmp_path / "runs").exists()

    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"a red circle\n\xff\xfe a blue square\n")
    with pytest.raises(ConfigError, match=r"prompts\.txt is not UTF-8 text .* at byte 13"):
        read_prompts([], str(prompts))

    if not torch.cuda.is_available():
        caplog.clear()
        assert main(["sample", "--ckpt", str(tmp_path / "any.ckpt"), "--classes", "1", "--device", "cuda",
                     "--out", str(tmp_path / "s")]) == 2
        assert "--device cuda" in caplog.text and not (tmp_path / "s").exists()
