"""`nar sample` / `nar bench` without Lightning, the guidance defaults and the --cfg alias, and the one
sampling surface (make_sampler, the CFG helpers) that every sampler shares."""

from __future__ import annotations

import errno
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nar.cli.main import main
from nar.config import config_path, to_dict
from nar.errors import EXIT_USAGE, ConfigError
from nar.model import NARConfig, NARModel
from nar.model.official import to_official_state_dict
from nar.sampling import SamplingConfig, apply_guidance, generate, guidance_on, guide, make_sampler, with_null
from nar.sampling.fast import FastSampler
from nar.workflows.sample import (
    SampleJob,
    read_prompts,
    run_config_from_yaml,
    run_sample,
    sample_images,
    sampling_for,
)

TINY = NARConfig.from_name("NAR-tiny", dim=32, n_layer=1, n_head=2, vocab_size=512, grid=[2, 2], num_classes=4)
# Runs `nar ARGS...` in a fresh interpreter, then fails unless Lightning stayed out of it.
NO_LIGHTNING = ("import sys\nfrom nar.cli.main import main\ntry:\n    rc = main(sys.argv[1:])\n"
                "except SystemExit as exit_:\n    rc = exit_.code\n"
                "assert 'lightning' not in sys.modules, sorted(m for m in sys.modules if m.startswith('lightning'))\n"
                "sys.exit(rc)")


def save_run_checkpoint(path, cfg: NARConfig, sampling: SamplingConfig) -> None:
    """A checkpoint as a training run writes it (Lightning keys, ``model.`` weights, the run config dict)."""
    run = {"model": to_dict(cfg), "tokenizer": {"path": "vq-tiny-emoji", "config": ""}, "sampling": to_dict(sampling)}
    state = {f"model.{k}": v for k, v in NARModel(cfg).state_dict().items()}
    torch.save({"pytorch-lightning_version": "2", "hyper_parameters": {"cfg": run}, "state_dict": state}, path)


def nar_without_lightning(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_LIGHTNING, *args], capture_output=True, text=True, timeout=300)


def test_nar_sample_and_bench_import_no_lightning(tmp_path):
    save_run_checkpoint(tmp_path / "last.ckpt", TINY, SamplingConfig(cfg_scale=3.0, top_k=5))
    out = tmp_path / "out"
    proc = nar_without_lightning("sample", "--ckpt", str(tmp_path / "last.ckpt"), "--classes", "0", "3",
                                 "--n-per-prompt", "2", "--device", "cpu", "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "samples.json").read_text())
    assert report["sampling"]["cfg_scale"] == 3.0 and report["sampling"]["top_k"] == 5  # the run's settings
    assert report["tokenizer"] == "vq-tiny-emoji" and [r["class"] for r in report["samples"]] == [0, 0, 3, 3]
    assert len(list((out / "images").glob("*.png"))) == 4 and (out / "grid.png").is_file()
    proc = nar_without_lightning("bench", "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    help_text = " ".join(proc.stdout.split())
    assert "--guidance GUIDANCE, --cfg GUIDANCE" in help_text and "(default: 2.0, the paper's benchmark setting)" in help_text


def test_nar_sample_loads_and_samples_a_par_run(tmp_path):
    """A PAR run's checkpoint (its transition embedding included, loaded strictly) samples through `nar sample`."""
    par = NARConfig.from_name("NAR-tiny", dim=32, n_layer=1, n_head=2, vocab_size=512, grid=[2, 2], num_classes=4,
                              mode="par", regions=[1, 2])
    save_run_checkpoint(tmp_path / "last.ckpt", par, SamplingConfig(cfg_scale=2.0))
    out = tmp_path / "out"
    assert main(["sample", "--ckpt", str(tmp_path / "last.ckpt"), "--classes", "1", "--device", "cpu",
                 "--out", str(out)]) == 0
    report = json.loads((out / "samples.json").read_text())
    assert [r["class"] for r in report["samples"]] == [1] and (out / "grid.png").is_file()


def test_official_guidance_defaults_and_the_cfg_alias(tmp_path, capsys):
    ckpt = tmp_path / "c2i.pt"
    torch.save({"model": to_official_state_dict(NARModel(TINY))}, ckpt)
    base = ["sample", "--ckpt", str(ckpt), "--official", "--n-head", "2", "--grid", "2", "2", "--tokenizer",
            "vq-tiny-emoji", "--classes", "1", "--device", "cpu"]
    for extra, scale in [([], 2.0), (["--cfg", "1.5"], 1.5), (["--guidance", "1.0"], 1.0)]:
        out = tmp_path / f"out{scale}"
        assert main([*base, *extra, "--out", str(out)]) == 0
        assert json.loads((out / "samples.json").read_text())["sampling"]["cfg_scale"] == scale
    t2i = NARConfig.from_name("NAR-tiny", condition="caption", caption_len=6, caption_dim=8)
    assert sampling_for(SampleJob("x.pt", "out"), t2i, None).cfg_scale == 7.5  # official text-to-image
    from_yaml = {"sampling": {"cfg_scale": 7.5, "top_k": 100}}  # a --config file that sets it
    assert sampling_for(SampleJob("x.pt", "out"), t2i, from_yaml) == SamplingConfig(cfg_scale=7.5, top_k=100)
    assert sampling_for(SampleJob("x.pt", "out", guidance=1.0, top_p=0.9), t2i, from_yaml).cfg_scale == 1.0
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ("default: the run's sampling.cfg_scale for our checkpoints; official checkpoints: 7.5 text-to-image, "
            "2.0 class-conditional, the official samplers' settings") in help_text


def test_make_sampler_is_the_fast_sampler_and_draws_what_generate_draws():
    torch.manual_seed(0)
    model = NARModel(NARConfig.from_name("NAR-tiny", grid=[3, 4])).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    cond = torch.tensor([0, 7])
    s = SamplingConfig(cfg_scale=2.0, cfg_interval=4, top_k=10)
    sampler = make_sampler(model, 2, s, attention="sdpa")
    assert isinstance(sampler, FastSampler) and sampler.attention == "sdpa"
    want = generate(model, cond, s, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sampler(cond, generator=torch.Generator().manual_seed(3)), want)


def test_cfg_helpers():
    model = NARModel(NARConfig.from_name("NAR-tiny", condition="caption", caption_len=3, caption_dim=8))
    feats, mask = torch.randn(2, 3, 8), torch.tensor([[0, 1, 1], [1, 1, 1]]).bool()
    guided, plain = SamplingConfig(cfg_scale=2.0, cfg_interval=3), SamplingConfig()
    cond2, mask2 = with_null(model, feats, mask, guided)
    assert cond2.shape == (4, 3, 8) and torch.equal(cond2[:2], feats) and torch.equal(mask2, torch.cat([mask, mask]))
    assert torch.equal(cond2[2:], model.null_condition(feats))
    assert with_null(model, feats, mask, plain) == (feats, mask)
    assert [guidance_on(guided, n) for n in (0, 3, 4)] == [True, True, False] and not guidance_on(plain, 0)
    assert guidance_on(SamplingConfig(cfg_scale=2.0), 10**6)  # cfg_interval -1: always
    logits = torch.randn(4, 5, 7)
    assert torch.equal(apply_guidance(logits, guided, True), guide(logits, 2.0))
    assert torch.equal(apply_guidance(logits, guided, False), logits[:2])  # past the interval: conditional half
    assert apply_guidance(logits, plain, False) is logits


def test_nar_sample_takes_a_sampler_option(tmp_path, caplog):
    """--sampler wavefront samples every asked class (batches of 2: two cohorts and a padded third); a
    misspelt sampler stops before any loading, naming the option."""
    save_run_checkpoint(tmp_path / "last.ckpt", TINY, SamplingConfig(cfg_scale=2.0))
    out = tmp_path / "out"
    assert main(["sample", "--ckpt", str(tmp_path / "last.ckpt"), "--classes", "0", "1", "2", "3", "1",
                 "--batch-size", "2", "--sampler", "wavefront", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "samples.json").read_text())
    assert [r["class"] for r in report["samples"]] == [0, 1, 2, 3, 1]
    assert main(["sample", "--ckpt", str(tmp_path / "missing.ckpt"), "--classes", "0", "--sampler", "turbo",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--sampler" in caplog.text and "turbo" in caplog.text


def test_read_prompts_skips_indented_comments_and_a_bom(tmp_path):
    """Comment lines count however indented; a UTF-8 BOM (Windows editors) does not end up in the first prompt."""
    prompts = ["a photo of a red circle", "a photo of a blue square"]
    path = tmp_path / "prompts.txt"
    path.write_text(f"# header\n{prompts[0]}\n  # indented comment\n\t#tabbed\n\n{prompts[1]}\n", encoding="utf-8-sig")
    assert read_prompts(["x"], str(path)) == ["x", *prompts]
    path.write_bytes(b"\xef\xbb\xbfa red circle\n\xff a blue square\n")
    with pytest.raises(ConfigError, match=r"prompts\.txt is not UTF-8 text .* at byte 16"):  # counted in the file
        read_prompts([], str(path))


def test_run_config_from_yaml_takes_packaged_experiment_names(tmp_path, monkeypatch):
    """`--config demo/emoji.yaml` names the packaged experiment, as for `nar train`, outside a checkout too."""
    monkeypatch.chdir(tmp_path)
    packaged = config_path("demo/emoji.yaml")
    assert packaged.is_file() and not (tmp_path / "demo").exists()
    run = run_config_from_yaml(["demo/emoji.yaml"])
    assert run == run_config_from_yaml([packaged]) and run["model"]
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        run_config_from_yaml(["missing.yaml"])


def test_nar_sample_refuses_a_used_folder_unless_overwrite(tmp_path, caplog):
    """A second job into the same --out would leave the first job's pictures and prompts beside its own (and
    eval-samples scores the whole folder): refused, naming the folder; --overwrite clears only nar sample's files."""
    save_run_checkpoint(tmp_path / "last.ckpt", TINY, SamplingConfig(cfg_scale=2.0))
    out, images = tmp_path / "out", tmp_path / "out" / "images"
    base = ["sample", "--ckpt", str(tmp_path / "last.ckpt"), "--device", "cpu", "--out", str(out)]
    assert main([*base, "--classes", "0", "1", "--n-per-prompt", "2"]) == 0
    first = {p.name: p.read_bytes() for p in images.iterdir()}
    assert main([*base, "--classes", "3"]) == EXIT_USAGE
    assert str(images) in caplog.text and "--overwrite" in caplog.text
    assert {p.name: p.read_bytes() for p in images.iterdir()} == first  # untouched
    for name in ("0001_00.txt", "0002_01.gif"):  # what caption and video jobs leave
        (images / name).write_text("old")
    (images / "notes.md").write_text("mine")
    assert main([*base, "--classes", "3", "--overwrite"]) == 0
    assert sorted(p.name for p in images.iterdir()) == ["0000_00.png", "notes.md"]
    assert [r["file"] for r in json.loads((out / "samples.json").read_text())["samples"]] == ["images/0000_00.png"]


def test_nar_sample_out_must_be_a_folder_before_any_loading(tmp_path, caplog):
    """--out naming a file is refused first (the checkpoint is never read), naming --out."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "below"):
        caplog.clear()
        assert main(["sample", "--ckpt", str(tmp_path / "missing.ckpt"), "--classes", "0", "--device", "cpu",
                     "--out", str(out)]) == EXIT_USAGE
        assert "--out" in caplog.text and str(afile) in caplog.text and "missing.ckpt" not in caplog.text
    assert afile.read_text() == "x"


def test_pictures_are_written_atomically_and_errors_name_the_file(tmp_path, monkeypatch):
    """A write that fails half way (a full disk) leaves nothing under the final name and raises a WriteError
    naming it; so does a destination below a file."""
    from PIL import Image

    from nar.atomic import WriteError
    from nar.pictures import save_gif, save_png

    picture, video = torch.rand(3, 8, 8), torch.rand(3, 2, 8, 8)
    assert save_png(picture, tmp_path / "ok.png").is_file() and save_gif(video, tmp_path / "ok.gif").is_file()

    def disk_full(self, fp, *args, **kwargs):
        with open(fp, "wb") as fh:  # part of the file, then no space
            fh.write(b"\x89PNG\r\n")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(WriteError, match=r"grid\.png.*no space left"):
        save_png(picture, tmp_path / "grid.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.gif", "ok.png"]  # no truncated file, no temporary
    monkeypatch.undo()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(WriteError, match=r"afile/v\.gif"):
        save_gif(video, tmp_path / "afile" / "v.gif")
    with pytest.raises(WriteError, match=r"afile/p\.png"):
        save_png(picture, tmp_path / "afile" / "p.png")


def test_tokenizer_presets_decode_reproducibly_and_say_they_are_untrained(tmp_path, caplog):
    """A preset tokenizer (smoke runs, tests) has random weights: a warning says so, and they are drawn from the
    sample seed, so the same job gives the same pictures whatever the global RNG did before."""
    save_run_checkpoint(tmp_path / "last.ckpt", TINY, SamplingConfig(cfg_scale=2.0))  # tokenizer.path: a preset
    pictures = []
    for i in range(2):
        result = run_sample(SampleJob(ckpt=str(tmp_path / "last.ckpt"), out=str(tmp_path / f"o{i}"), classes=[1],
                                      device="cpu", seed=0))
        pictures.append((result.out / "images" / "0000_00.png").read_bytes())
    assert pictures[0] == pictures[1]
    assert "vq-tiny-emoji" in caplog.text and "untrained" in caplog.text


def test_batches_of_neighbouring_seeds_draw_different_samples():
    """Batch b of --seed s is not batch b - 1 of --seed s + 1: no sample repeats across two seeds' jobs."""

    class TokensAsPixels(torch.nn.Module):  # the tokens themselves, as [B, 3, *grid] "pixels"
        def decode(self, tokens: torch.Tensor) -> torch.Tensor:
            return (tokens.float() / TINY.vocab_size)[:, None].expand(-1, 3, -1, -1)

    torch.manual_seed(0)
    model = NARModel(TINY).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    tokenizer = TokensAsPixels()
    runs = [sample_images(model, tokenizer, [2], n_per=4, batch_size=2, seed=seed) for seed in (0, 1, 0)]
    assert torch.equal(runs[0], runs[2])  # a seed reproduces its samples
    assert not any(torch.equal(a, b) for a in runs[0] for b in runs[1])


def _run_made_in(cwd, monkeypatch):
    """A run as `nar demo` makes it from ``cwd``: its config stores paths relative to ``cwd`` (runs_root
    ``runs/demo``, tokenizer ``runs/demo/tokenizer/tokenizer.pt``). Returns the checkpoint, absolute."""
    from nar.config import load_config
    from nar.runs import TrainConfig
    from nar.tokenizers import build_tokenizer, save_tokenizer

    monkeypatch.chdir(cwd)
    tok = save_tokenizer(build_tokenizer("vq-tiny-emoji"), "runs/demo/tokenizer/tokenizer.pt")
    (cwd / "runs/demo/tokens").mkdir()
    cfg = load_config(TrainConfig, [], [f"model.{k}={v}" for k, v in to_dict(TINY).items() if k in (
        "dim", "n_layer", "n_head", "vocab_size", "num_classes")] + [
        "model.grid=[2,2]", "runs_root=runs/demo", "name=nar", f"tokenizer.path={tok}", "data.root=runs/demo/tokens",
        "eval.real_root=runs/elsewhere"])
    ckpt = cwd / cfg.run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    state = {f"model.{k}": v for k, v in NARModel(cfg.model).state_dict().items()}
    torch.save({"pytorch-lightning_version": "2", "hyper_parameters": {"cfg": to_dict(cfg)}, "state_dict": state},
               ckpt)
    return ckpt


def test_a_run_made_in_one_directory_samples_from_another(tmp_path, monkeypatch, caplog):
    """The stored tokenizer path is relative to where the run was made: `nar sample --ckpt /abs/...` from any other
    directory finds it under that folder (run folder less runs_root/name), and says which file it used."""
    import logging

    from nar.model.io import stored_run_config
    from nar.runs.folder import made_from, resolve_stored_paths, run_dir_of

    made, other = tmp_path / "made", tmp_path / "other"
    made.mkdir(), other.mkdir()
    ckpt = _run_made_in(made, monkeypatch)
    monkeypatch.chdir(other)
    with caplog.at_level(logging.INFO):
        assert main(["sample", "--ckpt", str(ckpt), "--classes", "1", "--device", "cpu", "--out", "out"]) == 0
    used = str(made / "runs/demo/tokenizer/tokenizer.pt")
    assert json.loads((other / "out" / "samples.json").read_text())["tokenizer"] == used and used in caplog.text

    stored = stored_run_config(ckpt)
    assert made_from(run_dir_of(ckpt), stored) == made
    (other / "runs/demo/tokens").mkdir(parents=True)  # another folder of the same name here is not the run's
    resolved = resolve_stored_paths(run_dir_of(ckpt), stored)
    assert resolved["data"]["root"] == str(made / "runs/demo/tokens")  # what `nar evaluate` reads too
    assert resolved["eval"]["real_root"] == "runs/elsewhere"  # found nowhere: left for the loader to name
    assert stored["data"]["root"] == "runs/demo/tokens"  # the stored config itself is not changed
    assert made_from(run_dir_of(ckpt), {**stored, "runs_root": "../runs"}) is None  # cannot be told
    moved = tmp_path / "moved" / "nar"  # a run folder no longer under <made>/runs/demo: the path as stored
    assert resolve_stored_paths(moved, stored)["tokenizer"]["path"] == "runs/demo/tokenizer/tokenizer.pt"
    monkeypatch.chdir(made)  # read from where it was made: the paths as stored
    assert resolve_stored_paths(run_dir_of(ckpt), stored) == stored


def test_evaluate_and_export_read_a_run_from_another_directory(tmp_path, monkeypatch):
    """`nar evaluate --ckpt /abs/...` from another directory takes the run's paths as found under the folder it was
    made in; `nar export` writes them so, since an exported file outside checkpoints/ could not be placed later."""
    from nar.model.io import stored_run_config
    from nar.workflows.export import export_generator
    from nar.workflows.train import evaluation_config

    made, other = tmp_path / "made", tmp_path / "other"
    made.mkdir(), other.mkdir()
    ckpt = _run_made_in(made, monkeypatch)
    monkeypatch.chdir(other)
    tokenizer = str(made / "runs/demo/tokenizer/tokenizer.pt")
    cfg = evaluation_config(ckpt)
    assert cfg.tokenizer.path == tokenizer and cfg.data.root == str(made / "runs/demo/tokens")
    export_generator(ckpt, other / "g.pt", ema=False)
    assert stored_run_config(other / "g.pt")["tokenizer"]["path"] == tokenizer


# --- a job that is stopped keeps its work, and goes on where it stopped ---------------------------------------------

def _kill_at_picture(monkeypatch, n: int, exc: BaseException | None = None) -> list[str]:
    """``nar.pictures.save_png`` raises ``exc`` (a kill: KeyboardInterrupt) at its ``n``-th call (0: never); returns
    the names it was asked to write, the failing one included."""
    import nar.pictures

    real, asked = nar.pictures.save_png, []

    def save_png(picture, path):
        asked.append(Path(path).name)
        if len(asked) == n:
            raise exc if exc is not None else KeyboardInterrupt
        return real(picture, path)

    monkeypatch.setattr(nar.pictures, "save_png", save_png)
    return asked


def _files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("sampler", ["fast", "wavefront"])
def test_a_killed_job_goes_on_to_the_bytes_of_an_unbroken_one(tmp_path, monkeypatch, caplog, sampler):
    """Each batch is written as it is sampled, after a samples.json that says the job is unfinished: a job killed
    in its third batch keeps its first two, and the same command goes on from there, sampling only the batches
    whose files are missing or damaged; what it ends with is byte for byte what an unbroken job writes."""
    import logging

    save_run_checkpoint(tmp_path / "last.ckpt", TINY, SamplingConfig(cfg_scale=2.0))
    base = ["sample", "--ckpt", str(tmp_path / "last.ckpt"), "--classes", "0", "1", "2", "--n-per-prompt", "2",
            "--batch-size", "2", "--sampler", sampler, "--device", "cpu", "--threads", "1"]
    assert main([*base, "--out", str(tmp_path / "unbroken")]) == 0
    unbroken = _files(tmp_path / "unbroken")

    out = tmp_path / "out"
    asked = _kill_at_picture(monkeypatch, 6)  # the second picture of the third batch
    with caplog.at_level(logging.INFO), pytest.raises(KeyboardInterrupt):
        main([*base, "--out", str(out)])
    assert asked[-1] == "0002_01.png"
    report = json.loads((out / "samples.json").read_text())
    assert report["complete"] is False and report["seed"] == 0 and report["sampler"] == sampler
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"000{i}_0{j}.png" for i in range(3)
                                                                  for j in range(2)][:5]
    assert not (out / "grid.png").exists()
    assert "sampling: interrupted at 4/6 img" in caplog.text  # the progress line: not "stopped by an error"

    (out / "images" / "0001_00.png").write_bytes(unbroken["images/0001_00.png"][:40])  # damaged: batch 1 again
    caplog.clear()
    asked = _kill_at_picture(monkeypatch, 0)
    with caplog.at_level(logging.INFO):
        assert main([*base, "--out", str(out)]) == 0
    assert asked == ["0001_00.png", "0001_01.png", "0002_00.png", "0002_01.png", "grid.png"]  # batch 0 read back
    assert "1 of 3 batches" in caplog.text and "0001_00.png" in caplog.text  # kept, and the damaged file named
    resumed = _files(out)
    assert json.loads(resumed.pop("samples.json"))["complete"] is True
    assert resumed == {k: v for k, v in unbroken.items() if k != "samples.json"}


def test_an_unfinished_job_with_other_settings_is_refused_and_overwrite_clears_it_first(tmp_path, monkeypatch,
                                                                                       caplog):
    """Another seed or sampler would mix two jobs' samples in one folder: refused, naming what differs and the
    folder; --overwrite removes samples.json and grid.png first, then the pictures and any temporaries left by a
    killed writer (in the folder too), so a job killed while writing leaves no earlier job's record or grid."""
    from nar.atomic import _host

    save_run_checkpoint(tmp_path / "last.ckpt", TINY, SamplingConfig(cfg_scale=2.0))
    out, images = tmp_path / "out", tmp_path / "out" / "images"
    base = ["sample", "--ckpt", str(tmp_path / "last.ckpt"), "--classes", "0", "1", "2", "--batch-size", "1",
            "--device", "cpu", "--threads", "1", "--out", str(out)]
    assert main(base) == 0  # a finished job: pictures, grid and samples.json
    old_grid = (out / "grid.png").read_bytes()
    _kill_at_picture(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):  # --overwrite --seed 5, killed while writing its second picture
        main([*base, "--overwrite", "--seed", "5"])
    report = json.loads((out / "samples.json").read_text())
    assert report["seed"] == 5 and report["complete"] is False
    assert not (out / "grid.png").exists() and sorted(p.name for p in images.iterdir()) == ["0000_00.png"]

    before = _files(out)
    asked = ["--classes", "0", "1", "2", "--device", "cpu", "--threads", "1", "--out", str(out)]
    for other, said in (["--seed", "0"], "seed 5 -> 0"), (["--sampler", "wavefront"], "sampler 'fast' -> 'wavefront'"), \
            (["--batch-size", "2"], "batch_size 1 -> 2"), (["--guidance", "3"], "sampling.cfg_scale 2.0 -> 3.0"):
        caplog.clear()
        settings = {"--seed": "5", "--batch-size": "1", **dict(zip(other[::2], other[1::2]))}
        argv = ["sample", "--ckpt", str(tmp_path / "last.ckpt"), *asked, *(x for kv in settings.items() for x in kv)]
        assert main(argv) == EXIT_USAGE
        assert said in caplog.text and str(images) in caplog.text and "--overwrite" in caplog.text, caplog.text
        assert _files(out) == before  # untouched

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [out / f".grid.png.{dead.stdout.strip()}@{_host()}.tmp", images / f".0000_01.png.{dead.stdout.strip()}"
                                                                                f"@{_host()}.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    _kill_at_picture(monkeypatch, 0)
    assert main([*base, "--overwrite", "--seed", "7"]) == 0
    assert not any(p.exists() for p in stale) and (out / "grid.png").read_bytes() != old_grid
    assert json.loads((out / "samples.json").read_text())["seed"] == 7


def test_the_grid_is_capped_and_samples_json_records_what_changes_the_pictures(tmp_path):
    """grid.png shows the first --grid-samples samples (0: no grid), read from the files written; samples.json
    records the sampler, the batch size, the picture size and the command line, which change or explain them."""
    from PIL import Image

    save_run_checkpoint(tmp_path / "last.ckpt", TINY, SamplingConfig(cfg_scale=2.0))
    base = ["sample", "--ckpt", str(tmp_path / "last.ckpt"), "--classes", "0", "1", "2", "--n-per-prompt", "2",
            "--device", "cpu", "--threads", "1"]
    argv = [*base, "--grid-samples", "4", "--out", str(tmp_path / "four")]
    assert main(argv) == 0
    picture = 2 * 4  # TINY's 2x2 grid through vq-tiny-emoji's 4x upsampling
    tile = picture + 1  # make_grid's padding
    with Image.open(tmp_path / "four" / "grid.png") as grid:  # two rows of a class's two samples
        assert grid.size == (2 * tile + 1, 2 * tile + 1)
        first = grid.crop((1, 1, 1 + picture, 1 + picture)).convert("RGB").tobytes()
    with Image.open(tmp_path / "four" / "images" / "0000_00.png") as sample:
        assert first == sample.convert("RGB").tobytes()
    report = json.loads((tmp_path / "four" / "samples.json").read_text())
    assert report["sampler"] == "fast" and report["batch_size"] == 32 and report["image_size"] == [picture, picture]
    assert report["command"] == "nar " + shlex.join(argv)  # the command as given, as results.json records it
    assert report["complete"] is True and report["grid_samples"] == 4
    assert report["sampling"]["cfg_scale"] == 2.0 and report["sampling"]["temperature"] == 1.0

    assert main([*base, "--grid-samples", "0", "--out", str(tmp_path / "none")]) == 0
    assert not (tmp_path / "none" / "grid.png").exists() and len(list((tmp_path / "none" / "images").iterdir())) == 6
    assert main([*base, "--grid-samples", "-1", "--out", str(tmp_path / "bad")]) == EXIT_USAGE


def test_a_tokenizer_of_other_axes_is_refused_before_sampling_and_other_sizes_warned(tmp_path, caplog):
    """A video tokenizer on an image model would fail in its first decode, after a batch was sampled: refused at
    start, naming --tokenizer. A codebook larger than the vocabulary and a picture size other than the tokenizer's
    are warned about."""
    from nar.tokenizers import VQConfig, build_tokenizer, save_tokenizer

    save_run_checkpoint(tmp_path / "last.ckpt", TINY, SamplingConfig(cfg_scale=2.0))
    base = ["sample", "--ckpt", str(tmp_path / "last.ckpt"), "--classes", "1", "--device", "cpu"]
    assert main([*base, "--tokenizer", "vq-video-tiny-atari", "--out", str(tmp_path / "video")]) == EXIT_USAGE
    assert "--tokenizer vq-video-tiny-atari" in caplog.text and "video" in caplog.text
    assert not (tmp_path / "video" / "samples.json").exists()

    caplog.clear()
    big = save_tokenizer(build_tokenizer(VQConfig.from_name("vq-tiny-emoji", codebook_size=1024)), tmp_path / "b.pt")
    assert main([*base, "--tokenizer", str(big), "--out", str(tmp_path / "big")]) == 0
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "1024 codes" in warned and "512" in warned  # the model samples only the first 512
    assert "32x32" in warned and "8x8" in warned  # made for 32 px; TINY's 2x2 grid decodes to 8 px


def test_a_stop_is_not_called_an_error_in_the_progress_line(caplog):
    """Ctrl-C, SIGTERM (Lightning's SystemExit, nar's RunInterrupted, a decoding validation's stop) end the progress
    line with "interrupted"; any other exception with "stopped by an error"."""
    import logging

    from nar.errors import RunInterrupted
    from nar.lightning.callbacks.decoding import _StopAsked
    from nar.lightning.callbacks.run_guard import ValidationStopped
    from nar.progress import Progress

    caplog.set_level(logging.INFO, logger="nar")
    for exc, said in [(KeyboardInterrupt, "interrupted"), (SystemExit, "interrupted"), (RunInterrupted, "interrupted"),
                      (_StopAsked, "interrupted"), (ValidationStopped, "interrupted"), (OSError, "stopped by an error"),
                      (ValueError, "stopped by an error")]:
        caplog.clear()
        with pytest.raises(exc), Progress(40, "sampling", unit="img", every_s=1e9, tty=False) as p:
            p.update(20)
            raise exc
        (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sampling:")]
        assert line.startswith(f"sampling: {said} at 20/40 img: 20 img in "), (exc, line)


def test_nar_sample_stopped_by_sigterm_keeps_its_batches_and_exits_75(tmp_path, monkeypatch, caplog):
    """SIGTERM (a scheduler's preemption) during `nar sample` stops it at once: the batches written stay, the log
    says how many and how to go on, and it exits 75 (EX_TEMPFAIL, which schedulers can requeue on)."""
    import logging
    import signal

    from nar.errors import EXIT_INTERRUPTED

    save_run_checkpoint(tmp_path / "last.ckpt", TINY, SamplingConfig(cfg_scale=2.0))
    before = signal.getsignal(signal.SIGTERM)
    import nar.pictures

    real, calls = nar.pictures.save_png, []

    def save_png(picture, path):
        calls.append(path)
        if len(calls) == 3:
            # never the default handler here: it would end the test run
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None, before)
            signal.raise_signal(signal.SIGTERM)
        return real(picture, path)

    monkeypatch.setattr(nar.pictures, "save_png", save_png)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert main(["sample", "--ckpt", str(tmp_path / "last.ckpt"), "--classes", "0", "1", "2", "3",
                     "--batch-size", "1", "--device", "cpu", "--threads", "1", "--out", str(out)]) == EXIT_INTERRUPTED
    assert signal.getsignal(signal.SIGTERM) == before  # restored
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0000_00.png", "0001_00.png"]
    assert "interrupted at 2/4 img" in caplog.text and "SIGTERM" in caplog.text
    assert "2 of 4 samples" in caplog.text and "same command" in caplog.text


def test_a_video_job_goes_on_from_its_gifs(tmp_path, monkeypatch):
    """Videos are GIFs, read back to decide what a resumed job keeps and to make the grid; PIL stores equal
    consecutive frames as one longer frame, which reads back as the frames it stands for."""
    from nar.pictures import save_gif
    from nar.workflows.sample import read_sample

    still = torch.rand(3, 5, 8, 8)
    still[:, 1:3] = still[:, :1]  # frames 0-2 equal: stored as one
    save_gif(still, tmp_path / "still.gif")
    frames = read_sample(tmp_path / "still.gif", [5, 8, 8])
    assert frames.shape == (3, 5, 8, 8) and (frames - still).abs().max() < 0.01  # GIF palette rounding only

    video = NARConfig.from_name("NAR-tiny", dim=32, n_layer=1, n_head=2, vocab_size=512, grid=[1, 2, 2],
                                num_classes=4)
    run = {"model": to_dict(video), "tokenizer": {"path": "vq-video-tiny-atari", "config": ""},
           "sampling": to_dict(SamplingConfig(cfg_scale=2.0))}
    torch.save({"pytorch-lightning_version": "2", "hyper_parameters": {"cfg": run},
                "state_dict": {f"model.{k}": v for k, v in NARModel(video).state_dict().items()}}, tmp_path / "v.ckpt")
    base = ["sample", "--ckpt", str(tmp_path / "v.ckpt"), "--classes", "0", "1", "2", "--batch-size", "2",
            "--device", "cpu", "--threads", "1"]
    assert main([*base, "--out", str(tmp_path / "unbroken")]) == 0
    import nar.pictures

    real, written = nar.pictures.save_gif, []

    def killed_after_the_first_batch(picture, path):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(Path(path).name)
        return real(picture, path)

    monkeypatch.setattr(nar.pictures, "save_gif", killed_after_the_first_batch)
    with pytest.raises(KeyboardInterrupt):
        main([*base, "--out", str(tmp_path / "out")])
    monkeypatch.undo()
    assert main([*base, "--out", str(tmp_path / "out")]) == 0
    resumed, unbroken = _files(tmp_path / "out"), _files(tmp_path / "unbroken")
    assert json.loads(resumed.pop("samples.json"))["image_size"] == [4, 8, 8]  # T, H, W
    assert sorted(resumed) == ["grid.png", "images/0000_00.gif", "images/0001_00.gif", "images/0002_00.gif"]
    assert resumed == {k: v for k, v in unbroken.items() if k != "samples.json"}


def test_a_sampler_is_recorded_with_its_options_in_one_order():
    """samples.json and an evaluation's settings.json compare the sampler as one name: compile+wavefront and
    wavefront+compile are the same job (a rerun spelled the other way was refused as other settings)."""
    from nar.sampling.api import sampler_name

    assert sampler_name("compile+wavefront") == sampler_name("wavefront+compile") == "compile+wavefront"
    assert sampler_name("fast") == "fast"
