"""Sampling to files (``nar sample``): a generator, its tokenizer and, for captions, a text encoder →
``<out>/images/<i>_<j>.png`` (sample ``j`` of prompt/class ``i``, the prompt beside it in ``<i>_<j>.txt``),
``<out>/grid.png`` (the first ``grid_samples``, one row per prompt/class) and ``<out>/samples.json``.

Nothing waits for the whole job: ``samples.json`` is written first, with the job's settings (everything that
changes the pictures: checkpoint, tokenizer, sampling values, seed, sampler, batch size, device type, the samples
asked for) and ``"complete": false``; each batch's pictures (and prompts) are written as the batch is decoded, so
memory holds one batch; the grid is made from the files written, and ``samples.json`` then says ``"complete":
true``. A job stopped part way (a kill, SIGTERM, a full disk) goes on when the same command is run again: batches
whose files are all there and readable are kept, the others sampled; batch ``b`` draws from
:func:`~nar.sampling.seeds.batch_seed` ``(seed, b)`` alone, so the result is the unbroken job's, byte for byte.
An ``<out>/images`` holding anything else is refused (an unfinished job of other settings naming what differs)
unless ``overwrite``, which removes the earlier ``samples.json`` and ``grid.png`` first, then the pictures a job
writes (nothing else), so a folder never mixes two jobs' samples, nor labels one job's with another's record.

Our checkpoints carry the run config (:func:`nar.model.io.stored_run_config`): its ``model``, ``tokenizer``,
``sampling`` and ``text`` sections give the defaults, typed here with :func:`nar.config.from_dict`; their paths,
often relative to the folder the run was made in, are found from any directory
(:func:`nar.runs.folder.resolve_stored_paths`). Official ``.pt`` files are described by ``n_head`` (and ``grid``)
or by run YAMLs (``config``), read the same way.
No Lightning here: the model layer loads the weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from nar.atomic import WriteError, remove_stale_temporaries, write_text
from nar.config import from_dict
from nar.errors import ConfigError, RunInterrupted
from nar.model import NARConfig, NARModel
from nar.model.io import load_generator_and_run_config
from nar.progress import Progress
from nar.sampling import SamplingConfig, parse_sampler, sample_stream
from nar.sampling.api import sampler_name
from nar.sampling.seeds import batch_seed
from nar.text import TextEncoderConfig

log = logging.getLogger(__name__)

# Guidance scales of official checkpoints when no run config sets one: the official samplers' defaults
# (NAR-images sample_t2i.py: 7.5; the paper's ImageNet tables: 2.0).
OFFICIAL_GUIDANCE = {"caption": 7.5, "class": 2.0}
# The files a job puts under <out>/images (<i>_<j>.png|gif|txt): all that --overwrite removes there.
SAMPLE_FILE = re.compile(r"\d{4,}_\d{2,}\.(png|gif|txt)")
REPORT, GRID = "samples.json", "grid.png"
# Keys of samples.json that do not change the pictures: a job goes on whatever they say.
UNCOMPARED = frozenset({"complete", "command", "grid_samples"})


@dataclass
class SampleJob:
    """What to sample and where; ``None`` means "the run's setting" (see :func:`sampling_for`)."""

    ckpt: str
    out: str
    official: bool = False  # ckpt is an official NAR .pt: needs n_head (and grid) or config
    n_head: int | None = None
    grid: list[int] | None = None
    config: list[str] = field(default_factory=list)  # run YAMLs describing an official checkpoint
    tokenizer: str | None = None
    tokenizer_config: str | None = None
    prompts: list[str] = field(default_factory=list)
    prompt_file: str | None = None
    classes: list[int | str] | None = None  # ids, or names from the training data's meta.json
    n_per_prompt: int = 1
    guidance: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    batch_size: int = 32
    text_encoder: str | None = None  # "minilm" | "t5"
    text_encoder_path: str | None = None
    device: str | None = None  # None: cuda when available
    threads: int = 0
    compile_decoder: bool = False
    sampler: str = "fast"  # nar.sampling.parse_sampler: fast, compile, wavefront+compile, fp8+…
    overwrite: bool = False  # replace an earlier job's samples in out/images (see check_out)
    grid_samples: int = 64  # grid.png shows the first ones; 0 = no grid
    command: str | None = None  # recorded in samples.json (`nar sample …` as given); None: this process's argv


@dataclass
class SampleResult:
    out: Path
    grid: Path | None  # None with grid_samples 0
    records: list[dict[str, Any]]
    sampling: SamplingConfig


def read_prompts(prompts: Sequence[str] = (), prompt_file: str | None = None) -> list[str]:
    """``prompts`` then the lines of ``prompt_file`` (blank lines and ``#`` comments, indented ones too, skipped;
    a UTF-8 BOM, as Windows editors write, dropped)."""
    out = [p for p in prompts if p.strip()]
    if prompt_file:
        path = Path(prompt_file)
        if not path.is_file():
            raise ConfigError(f"--prompt-file: {path} does not exist")
        try:
            text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as err:
            raise ConfigError(f"--prompt-file: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        lines = (line.strip() for line in text.splitlines())
        out += [line for line in lines if line and not line.startswith("#")]
    return out


def run_config_from_yaml(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Run YAMLs merged in order into the plain dict a checkpoint stores (sections typed by the caller). Each path
    is a file or a packaged experiment name (``demo/emoji.yaml``), as for ``nar train``, so it works from a wheel."""
    from omegaconf import OmegaConf

    from nar.config import config_path, merge_sources

    return OmegaConf.to_container(merge_sources(OmegaConf.create({}), [config_path(p) for p in paths]),
                                  resolve=True)


def load_for_sampling(job: SampleJob) -> tuple[NARModel, dict[str, Any] | None]:
    """``(model in eval mode, the run config dict or None)`` from ``job.ckpt``, the file read once."""
    if not job.official:
        if job.n_head is not None or job.grid is not None:
            raise ConfigError("--n-head/--grid describe official checkpoints; add --official")
        from nar.runs.folder import resolve_stored_paths, run_dir_of

        model, run = load_generator_and_run_config(job.ckpt)
        # The run's paths were stored as given where it was made: the ones sampling reads are found again from here
        return model, resolve_stored_paths(run_dir_of(job.ckpt), run, ("tokenizer.path", "text.path")) if run else run
    if job.config:
        run = run_config_from_yaml(job.config)
        model, _ = load_generator_and_run_config(job.ckpt, from_dict(NARConfig, run.get("model") or {}))
        return model, run
    if job.n_head is None:
        raise ConfigError("--official needs --n-head (NAR-XL: 20) or --config describing the model")
    overrides: dict[str, Any] = {"grid": list(job.grid)} if job.grid else {}
    model, _ = load_generator_and_run_config(job.ckpt, n_head=job.n_head, **overrides)
    if model.cfg.condition == "caption" and not job.grid:
        # rotary positions hold no grid-sized weights: a stage-2 file would sample 256 px without a word
        raise ConfigError(f"{job.ckpt} is an official text-to-image checkpoint: give its --grid (stage 1, 256 px: "
                          "--grid 16 16; stage 2, 512 px: --grid 32 32); its weights do not tell")
    return model, None


def default_guidance(model_cfg: NARConfig, run: dict[str, Any] | None) -> float:
    """The run's ``sampling.cfg_scale`` (always stored in our checkpoints; a ``--config`` YAML may set it),
    else the official samplers' setting for official checkpoints: 7.5 text-to-image, 2.0 class-conditional."""
    stored = ((run or {}).get("sampling") or {}).get("cfg_scale")
    return float(stored) if stored is not None else OFFICIAL_GUIDANCE[model_cfg.condition]


def sampling_for(job: SampleJob, model_cfg: NARConfig, run: dict[str, Any] | None) -> SamplingConfig:
    """The run's sampling settings (defaults without one) with the job's choices on top."""
    base = from_dict(SamplingConfig, (run or {}).get("sampling") or {})
    chosen = dict(cfg_scale=job.guidance, temperature=job.temperature, top_k=job.top_k, top_p=job.top_p)
    chosen = {k: v for k, v in chosen.items() if v is not None}
    return replace(base, **{"cfg_scale": default_guidance(model_cfg, run), **chosen})


def text_encoder_config(model: NARModel, run: dict[str, Any] | None, kind: str | None, path: str | None,
                        device: str | None = None) -> TextEncoderConfig:
    """The run's text-encoder settings (with these overrides) on ``device``; without a run config, official caption
    models (2048-d features) default to FLAN-T5 with the official caption cleaning, others to MiniLM."""
    if run is not None:
        base = from_dict(TextEncoderConfig, run.get("text") or {})
    else:
        base = TextEncoderConfig(kind="t5" if model.cfg.caption_dim == 2048 else "minilm")
    cfg = replace(base, kind=kind or base.kind, path=path if path is not None else base.path,
                  device=device or base.device)
    if run is None and cfg.kind == "t5":
        cfg = replace(cfg, clean_captions="official")  # official checkpoints learned from cleaned captions
        if cfg.device.startswith("cuda"):
            cfg = replace(cfg, dtype="bfloat16")  # as the official samplers run FLAN-T5 (torch_dtype bf16)
    return cfg


def text_encoder_for(model: NARModel, run: dict[str, Any] | None, kind: str | None, path: str | None,
                     device: str | None = None) -> Callable:
    """The text encoder of :func:`text_encoder_config`, built for ``model``."""
    from nar.text import build_text_encoder

    return build_text_encoder(text_encoder_config(model, run, kind, path, device), model.cfg)


def load_tokenizer_for(model: NARModel, run: dict[str, Any] | None, path: str | None,
                       config: str | None, seed: int = 0) -> tuple[torch.nn.Module, str]:
    """``(frozen tokenizer in eval mode, its path)``: ``path`` or the run's ``tokenizer`` section.

    A preset name (``vq-tiny-emoji``; smoke runs and tests use them) builds a tokenizer with random weights: said in
    a warning, and drawn from ``seed`` so the same job decodes to the same pictures."""
    from nar.tokenizers import PRESETS, load_tokenizer

    ref = (run or {}).get("tokenizer") or {}
    tok_path = path or ref.get("path", "")
    if not tok_path:
        raise ConfigError("--tokenizer is required (the checkpoint names no tokenizer)")
    tok_config = config or (ref.get("config", "") if not path else "")
    if str(tok_path) in PRESETS and not Path(tok_path).exists():  # load_tokenizer's rule for a preset
        log.warning("tokenizer %s is a preset: its decoder is untrained (random weights drawn from seed %d), so "
                    "the pictures show only what an untrained decoder makes of the tokens", tok_path, seed)
        with torch.random.fork_rng(devices=[]):  # the job's own draw, leaving the global RNG as it was
            torch.manual_seed(seed)
            tokenizer = load_tokenizer(tok_path, config=tok_config or None)
    else:
        tokenizer = load_tokenizer(tok_path, config=tok_config or None)
    tokenizer = tokenizer.eval().requires_grad_(False)
    check_tokenizer_decodes(model.cfg, tokenizer, str(tok_path))
    return tokenizer, str(tok_path)


def picture_size(tokenizer: torch.nn.Module, grid: Sequence[int]) -> list[int] | None:
    """What ``tokenizer`` decodes a token grid to: ``[H, W]`` (images) or ``[T, H, W]`` (videos); None for a
    tokenizer that does not say its downsampling."""
    cfg = getattr(tokenizer, "config", None)
    return cfg.decoded_size(grid) if hasattr(cfg, "decoded_size") else None


def check_tokenizer_decodes(model_cfg: NARConfig, tokenizer: torch.nn.Module, tok_path: str) -> None:
    """Before any sampling: a tokenizer of other axes than the model's grid, or with fewer codes than the model
    samples, cannot decode what it samples (:class:`ConfigError` naming ``--tokenizer``); more codes, or a picture
    size other than the one the tokenizer was made for, may be another run's tokenizer (a warning). The grid's fit
    is :func:`nar.workflows.preflight.check_tokenizer_fits`, which ``nar train``/``nar evaluate`` ask at start."""
    from nar.tokenizers import VQConfig
    from nar.workflows.preflight import check_tokenizer_fits

    grid, vocab = list(model_cfg.grid), model_cfg.vocab_size
    config = getattr(tokenizer, "config", None)
    if isinstance(config, VQConfig):
        check_tokenizer_fits(grid, config, f"--tokenizer {tok_path}", key=None)
    elif getattr(tokenizer, "input_axes", len(grid)) != len(grid):  # a tokenizer without a VQ config
        raise ConfigError(f"--tokenizer {tok_path} takes {tokenizer.input_axes} token axes, but the model samples a "
                          f"{len(grid)}-axis token grid {grid} (model.grid); use the run's own tokenizer")
    codebook = getattr(tokenizer, "codebook_size", vocab)
    if vocab > codebook:  # the model would sample ids the tokenizer cannot decode
        raise ConfigError(f"--tokenizer {tok_path} has {codebook} codes, but the model samples "
                          f"{vocab} (model.vocab_size); use the run's own tokenizer")
    if codebook != vocab:
        log.warning("--tokenizer %s has %d codes, but the model samples only the first %d (model.vocab_size): is "
                    "it the run's own tokenizer?", tok_path, codebook, vocab)


def class_ids(wanted: Sequence[int | str], num_classes: int, names: Sequence[str] = ()) -> list[int]:
    """Class ids from ids or names (``names`` = the training data's classes, in id order; matched exactly, then
    ignoring case). Raises :class:`ConfigError` naming what does not resolve."""
    lowered: dict[str, int] = {}
    for i, name in enumerate(names):
        lowered.setdefault(str(name).lower(), i)
    out, unknown = [], []
    for item in wanted:
        text = str(item).strip()
        if text.lstrip("-").isdigit():
            out.append(int(text))
        elif text in names:
            out.append(list(names).index(text))
        elif text.lower() in lowered:
            out.append(lowered[text.lower()])
        else:
            unknown.append(text)
    if unknown:
        known = ", ".join(map(str, names[:12])) + (" ..." if len(names) > 12 else "") if names else "none stored"
        raise ConfigError(f"--classes: unknown class name(s) {unknown}; the run's classes: {known}")
    bad = [c for c in out if not 0 <= c < num_classes]
    if bad:
        raise ConfigError(f"--classes {bad} outside 0..{num_classes - 1}")
    return out


def conditions_for(model: NARModel, job: SampleJob, class_names: Sequence[str] = ()) -> list[Any]:
    """The prompts (caption models) or class ids (class models) of ``job``, checked against the model;
    classes may be given by name (``class_names``: the run's, from its training data)."""
    prompts = read_prompts(job.prompts, job.prompt_file)
    if model.cfg.condition == "caption":
        if job.classes:
            raise ConfigError(f"{job.ckpt} is a text-to-image model: give --prompt/--prompt-file, not --classes")
        if not prompts:
            raise ConfigError("text-to-image checkpoint: give --prompt \"...\" (repeatable) or --prompt-file FILE")
        return prompts
    if prompts:
        raise ConfigError(f"{job.ckpt} is class-conditional: give --classes, not prompts")
    if not job.classes:
        raise ConfigError("class-conditional checkpoint: give --classes 1 2 3 (ids or class names)")
    return class_ids(job.classes, model.cfg.num_classes, class_names)


@torch.no_grad()  # on a generator, torch sets and restores the mode around each step
def sample_batches(model: NARModel, tokenizer: torch.nn.Module, conditions: list[Any], *,
                   text_encoder: Callable | None = None, sampling: SamplingConfig | None = None, n_per: int = 1,
                   batch_size: int = 32, seed: int = 0, device: str = "cpu", sampler: str = "fast",
                   skip: frozenset[int] = frozenset()) -> Iterator[tuple[int, torch.Tensor]]:
    """``(b, pixels [n, 3, H, W] or [n, 3, T, H, W] in [-1, 1], on the CPU)`` for each batch ``b`` of the samples of
    ``conditions`` (prompts, or class ids) not in ``skip``, in order, as each is decoded.

    Rows are grouped by condition (``n_per`` consecutive samples each); batch ``b`` holds rows ``b * batch_size``
    on and draws from seed :func:`batch_seed` ``(seed, b)`` alone (so a skipped batch changes no other; the samples
    depend on ``batch_size`` too). Prompts go through ``text_encoder(list[str]) -> (features [B, L, D], mask [B, L])``.
    ``sampler`` names the sampling path (:func:`nar.sampling.parse_sampler`).
    """
    model = model.to(device).eval()
    tokenizer = tokenizer.to(device).eval()
    caption = model.cfg.condition == "caption"
    items = [c for c in conditions for _ in range(n_per)]
    todo = [b for b in range(math.ceil(len(items) / batch_size)) if b not in skip]

    def batches():
        for b in todo:
            chunk = items[b * batch_size:(b + 1) * batch_size]
            if caption:
                feats, mask = text_encoder(list(chunk))
                yield feats.to(device), mask.to(device), batch_seed(seed, b)
            else:
                yield torch.as_tensor(chunk, dtype=torch.long, device=device), None, batch_seed(seed, b)

    # batch_size: the wavefront pads a short batch to it, and the padding is part of what its cohort draws
    for b, tokens in zip(todo, sample_stream(model, batches(), sampling, sampler, batch_size)):
        yield b, tokenizer.decode(tokens.to(device)).float().clamp(-1, 1).cpu()


def sample_images(model: NARModel, tokenizer: torch.nn.Module, conditions: list[Any], *,
                  text_encoder: Callable | None = None, sampling: SamplingConfig | None = None, n_per: int = 1,
                  batch_size: int = 32, seed: int = 0, device: str = "cpu", sampler: str = "fast") -> torch.Tensor:
    """All the samples of :func:`sample_batches` at once: pixels ``[len(conditions) * n_per, 3, H, W]`` in
    [-1, 1] (held in memory: :func:`run_sample` writes each batch instead)."""
    return torch.cat([pixels for _, pixels in sample_batches(
        model, tokenizer, conditions, text_encoder=text_encoder, sampling=sampling, n_per=n_per,
        batch_size=batch_size, seed=seed, device=device, sampler=sampler)])


def sample_records(conditions: list[Any], n_per: int, caption: bool, video: bool) -> list[dict[str, Any]]:
    """What a job writes, in sample order: ``{"file": "images/<i>_<j>.png|gif", "prompt" | "class": cond}``."""
    ext = "gif" if video else "png"
    return [{"file": f"images/{i:04d}_{j:02d}.{ext}", "prompt" if caption else "class": cond}
            for i, cond in enumerate(conditions) for j in range(n_per)]


def write_batch(out: Path, pixels: torch.Tensor, records: Sequence[dict[str, Any]]) -> None:
    """One batch's samples ``pixels [n, 3, H, W]`` (PNG) or ``[n, 3, T, H, W]`` (animated GIF) in [-1, 1] under
    ``out`` as ``records`` name them, each written atomically; a prompt goes beside its picture (``.txt``), where
    nar eval-samples reads it as the sample's prompt."""
    from nar.pictures import save_gif, save_png, to_unit

    unit = to_unit(pixels)
    for sample, record in zip(unit, records):
        path = out / record["file"]
        (save_gif if path.suffix == ".gif" else save_png)(sample, path)
        if "prompt" in record:
            write_text(path.with_suffix(".txt"), f"{record['prompt']}\n")


def read_sample(path: Path, size: Sequence[int] | None = None) -> torch.Tensor:
    """A picture :func:`write_batch` wrote → ``[3, H, W]`` (PNG) or ``[3, T, H, W]`` (GIF) in [0, 1]; raises
    ``OSError``/``ValueError`` (or PIL's ``SyntaxError``/``EOFError``) for a damaged file, ``ValueError`` for one of
    another size than ``size`` (``[H, W]`` or ``[T, H, W]``)."""
    import numpy as np
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        frames = [(np.asarray(frame.convert("RGB")), frame.info.get("duration") or 0)
                  for frame in ImageSequence.Iterator(image)]
    if path.suffix == ".gif" and size is not None and len(frames) != size[0]:
        # PIL stores equal consecutive frames as one of a longer duration: as many again as it lasts
        unit = sum(d for _, d in frames) / size[0]
        frames = [(a, 0) for a, d in frames for _ in range(round(d / unit) if unit > 0 else 1)]
    pixels = torch.from_numpy(np.stack([a for a, _ in frames])).permute(3, 0, 1, 2).float() / 255  # [3, T, H, W]
    if path.suffix != ".gif":
        pixels = pixels[:, 0]
    if size is not None and list(pixels.shape[1:]) != list(size):
        raise ValueError(f"{path} is {'x'.join(map(str, pixels.shape[1:]))}, not {'x'.join(map(str, size))}")
    return pixels


def batch_written(out: Path, records: Sequence[dict[str, Any]], size: Sequence[int] | None) -> str | None:
    """None when every file of ``records`` is under ``out``, readable and of ``size`` (prompts as asked), else what is
    wrong with the first that is not: ``"missing <name>"`` or ``"damaged <name> (<why>)"``."""
    for record in records:
        path = out / record["file"]
        prompt = path.with_suffix(".txt")
        if not path.is_file() or ("prompt" in record and not prompt.is_file()):
            return f"missing {path.name if not path.is_file() else prompt.name}"
        try:
            read_sample(path, size)
            if "prompt" in record and prompt.read_text(encoding="utf-8") != f"{record['prompt']}\n":
                return f"damaged {prompt.name} (another prompt)"
        except (OSError, ValueError, SyntaxError, EOFError) as err:  # what PIL raises for a damaged file
            return f"damaged {path.name} ({err})"
    return None


def write_grid(out: Path, records: Sequence[dict[str, Any]], nrow: int | None,
               size: Sequence[int] | None) -> tuple[Path | None, list[str]]:
    """``out/grid.png`` of the pictures ``records`` name, read back from the files written (``nrow`` a row, default
    square; videos: a row of frames per sample). A file that cannot be read, or not at ``size`` (the first one's
    without it), is left out and named in the result: ``(grid path or None when none was read, the files left out)``."""
    from nar.pictures import sample_grid, save_png

    pictures, unread = [], []
    for record in records:
        try:
            pictures.append(read_sample(out / record["file"], size))
            size = size or pictures[0].shape[1:]
        except (OSError, ValueError, SyntaxError, EOFError):
            unread.append(record["file"])
    if not pictures:
        return None, unread
    return save_png(sample_grid(torch.stack(pictures), nrow), out / GRID), unread


def grid_row(n_conditions: int, n_per: int, shown: int) -> int | None:
    """Pictures per grid row: a prompt/class's samples when several are shown per row, else a square grid."""
    return n_per if n_conditions > 1 and 1 < n_per <= shown else None


def read_report(out: Path) -> dict[str, Any] | None:
    """``out/samples.json`` as a dict; None when there is none or it cannot be read (a foreign file)."""
    try:
        report = json.loads((out / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def unfinished(report: dict[str, Any] | None) -> bool:
    """Whether ``report`` is an unfinished job's (samples.json of jobs before this field were written last)."""
    return report is not None and report.get("complete", True) is False


def check_out(out: Path, overwrite: bool) -> dict[str, Any] | None:
    """Before any loading: ``out`` is or can become a folder, and ``out/images`` holds nothing unless ``overwrite``
    or an unfinished job's samples (an earlier job's samples would stay beside the new ones, and eval-samples scores
    the folder). Returns the unfinished job's ``samples.json`` (its settings are checked once the job's are known,
    :func:`check_same_job`), else None."""
    images = out / "images"
    nearest = next(p for p in (images, out, *out.parents) if p.exists())
    if not nearest.is_dir():
        where = "" if nearest == out else f", so {out} cannot be the output folder"
        raise ConfigError(f"{nearest} is a file, not a folder{where}", key="--out")
    if overwrite:
        return None
    report = read_report(out)
    if unfinished(report):
        return report
    if images.is_dir() and any(images.iterdir()):
        whose = "a finished job's samples" if report is not None else "an earlier job's samples?"
        raise ConfigError(f"{images} already holds files ({whose}); choose another --out, or add --overwrite to "
                          "replace the samples there", key="--out")
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def differences(earlier: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The settings that differ between an earlier job's record and this job's, as ``key earlier -> now``
    (``sampling.cfg_scale 2.0 -> 3.0``); the sample list is named, not shown."""
    out = []
    for key in sorted((set(earlier) | set(settings)) - UNCOMPARED):
        was, now = earlier.get(key), settings.get(key)
        if was == now:
            continue
        if key == "samples":
            out.append("samples (the prompts or classes, --n-per-prompt)")
        elif isinstance(was, dict) and isinstance(now, dict):
            out += [f"{key}.{k} {_shown(was.get(k))} -> {_shown(now.get(k))}" for k in sorted(set(was) | set(now))
                    if was.get(k) != now.get(k)]
        else:
            out.append(f"{key} {_shown(was)} -> {_shown(now)}")
    return out


def check_same_job(out: Path, earlier: dict[str, Any], settings: dict[str, Any]) -> None:
    """An unfinished job in ``out`` goes on only with the same settings (``settings`` as samples.json stores them):
    others would mix two jobs' samples in one folder. Raises :class:`ConfigError` naming what differs."""
    diff = differences(earlier, settings)
    if diff:
        raise ConfigError(f"{out / 'images'} already holds files of an unfinished job with other settings (its -> "
                          f"this command's: {'; '.join(diff)}); run its command again to finish it, choose another "
                          "--out, or add --overwrite to replace the samples there", key="--out")


def remove_owned(path: Path) -> bool:
    """Remove ``path`` if it is there (``--overwrite``); True when it was."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as err:
        raise WriteError(f"--overwrite: cannot remove {path}: {err.strerror or err}") from err
    return True


def clear_samples(images: Path) -> None:
    """Remove what a job writes under ``images`` (``--overwrite``), leaving any other file."""
    if not images.is_dir():
        return
    old = [p for p in images.iterdir() if p.is_file() and SAMPLE_FILE.fullmatch(p.name)]
    for path in old:
        remove_owned(path)
    remove_stale_temporaries(images)  # .<name>.<pid>@<host>.tmp of a killed job
    others = sorted(p.name for p in images.iterdir())
    log.info("--overwrite: removed %d earlier sample files from %s", len(old), images)
    if others:
        log.warning("%s still holds %d files nar sample did not write (%s); eval-samples of the folder reads "
                    "them too", images, len(others), ", ".join(others[:5]) + (" ..." if len(others) > 5 else ""))


def clear_job(out: Path) -> None:
    """``--overwrite``: the earlier job's record and grid first (a job killed in what follows must not leave them
    describing other pictures), then its pictures and prompts, and temporaries of killed writers."""
    for name in (REPORT, GRID):
        remove_owned(out / name)
    remove_stale_temporaries(out)  # .grid.png.<pid>@<host>.tmp, .samples.json...
    clear_samples(out / "images")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`RunInterrupted` where the job is (a picture being written is removed by its
    atomic writer), so the job ends with a line saying how far it came; main thread only (signals go there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise RunInterrupted(f"stopped by {signal.Signals(signum).name}")

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def job_settings(job: SampleJob, tok_path: str, sampling: SamplingConfig, device: str, size: list[int] | None,
                 text: TextEncoderConfig | None, records: list[dict[str, Any]]) -> dict[str, Any]:
    """What samples.json records (:data:`UNCOMPARED` aside, what changes the pictures: a job goes on only with the
    same), as JSON reads it back."""
    ckpt = Path(job.ckpt)
    stat = ckpt.stat() if ckpt.is_file() else None
    settings = {
        "ckpt": str(ckpt.resolve()),  # as the tokenizer's: the same job from another directory goes on
        # last.ckpt of a run still training changes under a job: other weights would make the rest
        "ckpt_file": {"bytes": stat.st_size, "modified_ns": stat.st_mtime_ns} if stat else None,
        "tokenizer": tok_path, "sampling": asdict(sampling), "seed": job.seed, "sampler": sampler_name(job.sampler, key="--sampler"),
        "batch_size": job.batch_size, "device": torch.device(device).type,  # a CPU and a GPU draw apart
        "image_size": size,  # [H, W], or [T, H, W] for videos
        "text_encoder": None if text is None else {k: getattr(text, k) for k in ("kind", "path", "max_len", "dtype",
                                                                                  "clean_captions")},
        "grid_samples": job.grid_samples, "command": job.command or shlex.join(sys.argv),
        "samples": records,
    }
    return json.loads(json.dumps(settings, allow_nan=False))


def write_report(out: Path, settings: dict[str, Any], complete: bool) -> None:
    write_text(out / REPORT, json.dumps({"complete": complete, **settings}, indent=1, allow_nan=False))


def run_sample(job: SampleJob) -> SampleResult:
    """The whole ``nar sample`` job (see the module docstring).

    Raises:
        ConfigError: conditions that do not fit the model, a missing or unfitting tokenizer, bad sampling values,
            an ``out`` that is a file or holds samples (without ``overwrite``; an unfinished job's with other
            settings).
        CheckpointError: an unreadable checkpoint or weights that do not fit their config.
        WriteError: a picture or ``samples.json`` that could not be written (each written atomically).
        RunInterrupted: SIGINT or SIGTERM while sampling; the batches written stay, and the same job goes on.
    """
    parse_sampler(job.sampler, key="--sampler")  # a typo fails before any loading
    out = Path(job.out)
    earlier = check_out(out, job.overwrite)
    if job.seed < 0:
        raise ConfigError(f"--seed {job.seed}: must be >= 0")
    if job.grid_samples < 0:
        raise ConfigError(f"--grid-samples {job.grid_samples}: must be >= 0 (0 = no grid)")
    if job.threads:
        torch.set_num_threads(job.threads)
    if job.n_per_prompt < 1 or job.batch_size < 1:
        raise ConfigError("--n-per-prompt and --batch-size must be >= 1")
    device = job.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is visible (use --device cpu)")
    model, run = load_for_sampling(job)
    caption = model.cfg.condition == "caption"
    conditions = conditions_for(model, job, (run or {}).get("classes") or [])
    tokenizer, tok_path = load_tokenizer_for(model, run, job.tokenizer, job.tokenizer_config, job.seed)
    sampling = sampling_for(job, model.cfg, run)
    text = text_encoder_config(model, run, job.text_encoder, job.text_encoder_path, device) if caption else None
    size = picture_size(tokenizer, model.cfg.grid)
    records = sample_records(conditions, job.n_per_prompt, caption, video=len(model.cfg.grid) == 3)
    settings = job_settings(job, tok_path, sampling, device, size, text, records)
    if earlier is not None:
        check_same_job(out, earlier, settings)
    encoder = text_encoder_for(model, run, job.text_encoder, job.text_encoder_path, device) if caption else None
    if job.compile_decoder and str(device).startswith("cuda"):
        tokenizer.decoder.compile()

    bs = job.batch_size
    batches = [records[start:start + bs] for start in range(0, len(records), bs)]
    kept: frozenset[int] = frozenset()
    if job.overwrite:
        clear_job(out)
    else:
        for folder in (out, out / "images"):
            remove_stale_temporaries(folder)  # .<name>.<pid>@<host>.tmp of a killed job
    if earlier is not None:  # the same job, stopped part way: keep the batches whose files are all there
        wrong = {b: batch_written(out, batch, size) for b, batch in enumerate(batches)}
        kept = frozenset(b for b, why in wrong.items() if why is None)
        damaged = [f"batch {b}: {why}" for b, why in wrong.items() if why is not None and why.startswith("damaged")]
        log.info("%s holds this job unfinished: %d of %d batches already written are kept, the other %d sampled",
                 out, len(kept), len(batches), len(batches) - len(kept))
        if damaged:
            log.warning("%d batches sampled again for damaged files (%s)", len(damaged),
                        "; ".join(damaged[:3]) + (" ..." if len(damaged) > 3 else ""))
    remove_owned(out / GRID)  # another job's, or this one's from a run stopped before its record said complete
    write_report(out, settings, complete=False)
    log.info("sampling %d x %d with guidance %s on %s", len(conditions), job.n_per_prompt, sampling.cfg_scale, device)

    written = sum(len(batches[b]) for b in kept)
    try:
        with stop_on_signals():
            with Progress(len(records), "sampling", unit="img", enabled=len(records) > bs) as progress:
                progress.skip(written)
                for b, pixels in sample_batches(model, tokenizer, conditions, text_encoder=encoder, sampling=sampling,
                                                n_per=job.n_per_prompt, batch_size=bs, seed=job.seed, device=device,
                                                sampler=job.sampler, skip=kept):
                    write_batch(out, pixels, batches[b])
                    written += len(batches[b])
                    progress.update(len(batches[b]))
            grid = None
            if job.grid_samples:
                shown = records[:job.grid_samples]
                grid, unread = write_grid(out, shown, grid_row(len(conditions), job.n_per_prompt, len(shown)),
                                          size)
                if unread:
                    log.warning("%s: %d of %d pictures could not be read back and are left out (%s)", out / GRID,
                                len(unread), len(shown), ", ".join(unread[:3]) + (" ..." if len(unread) > 3 else ""))
            write_report(out, settings, complete=True)
    except RunInterrupted as err:
        raise RunInterrupted(f"{err}: {written} of {len(records)} samples are written in {out / 'images'} and "
                             f"kept; run the same command to go on from there") from None
    return SampleResult(out, grid, records, sampling)
