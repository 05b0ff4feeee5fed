"""Sampling to files (``nar sample``): a generator, its tokenizer and, for captions, a text encoder →
``<out>/images/<i>_<j>.png`` (sample ``j`` of prompt/class ``i``, the prompt beside it in ``<i>_<j>.txt``),
``<out>/grid.png`` (one row per prompt/class) and ``<out>/samples.json``. An ``<out>/images`` holding anything is
refused unless ``overwrite``, which first removes the files a job writes there (nothing else), so a folder never
mixes two jobs' samples.

Our checkpoints carry the run config (:func:`nar.model.io.stored_run_config`): its ``model``, ``tokenizer``,
``sampling`` and ``text`` sections give the defaults, typed here with :func:`nar.config.from_dict`; their paths,
often relative to the folder the run was made in, are found from any directory
(:func:`nar.runs.folder.resolve_stored_paths`). Official ``.pt`` files are described by ``n_head`` (and ``grid``)
or by run YAMLs (``config``), read the same way.
No Lightning here: the model layer loads the weights.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from nar.atomic import WriteError, remove_stale_temporaries, write_text
from nar.config import from_dict
from nar.errors import ConfigError
from nar.model import NARConfig, NARModel
from nar.model.io import load_generator_and_run_config
from nar.sampling import SamplingConfig, parse_sampler, sample_stream
from nar.sampling.seeds import batch_seed
from nar.text import TextEncoderConfig

log = logging.getLogger(__name__)

# Guidance scales of official checkpoints when no run config sets one: the official samplers' defaults
# (NAR-images sample_t2i.py: 7.5; the paper's ImageNet tables: 2.0).
OFFICIAL_GUIDANCE = {"caption": 7.5, "class": 2.0}
# The files write_samples puts under <out>/images (<i>_<j>.png|gif|txt): all that --overwrite removes.
SAMPLE_FILE = re.compile(r"\d{4,}_\d{2,}\.(png|gif|txt)")


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


@dataclass
class SampleResult:
    out: Path
    grid: Path
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


def text_encoder_for(model: NARModel, run: dict[str, Any] | None, kind: str | None, path: str | None,
                     device: str | None = None) -> Callable:
    """The run's text encoder (with these overrides) on ``device``; without a run config, official caption
    models (2048-d features) default to FLAN-T5 with the official caption cleaning, others to MiniLM."""
    from nar.text import build_text_encoder

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
    return build_text_encoder(cfg, model.cfg)


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
    codebook = getattr(tokenizer, "codebook_size", model.cfg.vocab_size)
    if model.cfg.vocab_size > codebook:  # the model would sample ids the tokenizer cannot decode
        raise ConfigError(f"--tokenizer {tok_path} has {codebook} codes, but the model samples "
                          f"{model.cfg.vocab_size} (model.vocab_size); use the run's own tokenizer")
    return tokenizer, str(tok_path)


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


@torch.no_grad()
def sample_images(model: NARModel, tokenizer: torch.nn.Module, conditions: list[Any], *,
                  text_encoder: Callable | None = None, sampling: SamplingConfig | None = None, n_per: int = 1,
                  batch_size: int = 32, seed: int = 0, device: str = "cpu", sampler: str = "fast") -> torch.Tensor:
    """Samples for each condition (a prompt, or a class id) → pixels ``[len(conditions) * n_per, 3, H, W]`` in [-1, 1].

    Rows are grouped by condition (``n_per`` consecutive samples each); batch ``b`` (rows ``b * batch_size`` on)
    uses seed :func:`batch_seed` ``(seed, b)``, so the samples depend on ``batch_size`` too.
    Prompts go through ``text_encoder(list[str]) -> (features [B, L, D], mask [B, L])``. ``sampler`` names the
    sampling path (:func:`nar.sampling.parse_sampler`).
    """
    model = model.to(device).eval()
    tokenizer = tokenizer.to(device).eval()
    caption = model.cfg.condition == "caption"
    items = [c for c in conditions for _ in range(n_per)]

    def batches():
        for b, start in enumerate(range(0, len(items), batch_size)):
            chunk = items[start:start + batch_size]
            if caption:
                feats, mask = text_encoder(list(chunk))
                yield feats.to(device), mask.to(device), batch_seed(seed, b)
            else:
                yield torch.as_tensor(chunk, dtype=torch.long, device=device), None, batch_seed(seed, b)

    images = [tokenizer.decode(tokens.to(device)).float().clamp(-1, 1).cpu()
              for tokens in sample_stream(model, batches(), sampling, sampler, batch_size)]
    return torch.cat(images)


def write_samples(out: Path, pixels: torch.Tensor, conditions: list[Any], n_per: int,
                  caption: bool) -> tuple[list[dict[str, Any]], Path]:
    """Per sample a PNG (images) or an animated GIF (videos) under ``out/images``, with its prompt beside it
    for caption models; ``out/grid.png``: one row per prompt/class, or for videos one row of frames per
    sample. ``pixels [B, 3, H, W]`` or ``[B, 3, T, H, W]`` in [-1, 1]. Returns the records and the grid path."""
    from nar.pictures import sample_grid, save_gif, save_png, to_unit

    unit = to_unit(pixels)
    video = unit.dim() == 5
    records = []
    for i, cond in enumerate(conditions):
        for j in range(n_per):
            stem = f"{i:04d}_{j:02d}"
            sample = unit[i * n_per + j]
            name = f"images/{stem}.gif" if video else f"images/{stem}.png"
            (save_gif if video else save_png)(sample, out / name)
            if caption:  # beside the picture: nar eval-samples reads it as the sample's prompt
                write_text(out / "images" / f"{stem}.txt", f"{cond}\n")
            records.append({"file": name, "prompt" if caption else "class": cond})
    grid = save_png(sample_grid(unit, nrow=n_per if len(conditions) > 1 else None), out / "grid.png")
    return records, grid


def check_out(out: Path, overwrite: bool) -> None:
    """Before any loading: ``out`` is or can become a folder, and ``out/images`` holds nothing unless
    ``overwrite`` (an earlier job's samples would stay beside the new ones, and eval-samples scores the folder)."""
    images = out / "images"
    nearest = next(p for p in (images, out, *out.parents) if p.exists())
    if not nearest.is_dir():
        where = "" if nearest == out else f", so {out} cannot be the output folder"
        raise ConfigError(f"{nearest} is a file, not a folder{where}", key="--out")
    if images.is_dir() and any(images.iterdir()) and not overwrite:
        raise ConfigError(f"{images} already holds files (an earlier job's samples?); choose another --out, or add "
                          "--overwrite to replace the samples there", key="--out")


def clear_samples(images: Path) -> None:
    """Remove what :func:`write_samples` writes under ``images`` (``--overwrite``), leaving any other file."""
    if not images.is_dir():
        return
    old = [p for p in images.iterdir() if p.is_file() and SAMPLE_FILE.fullmatch(p.name)]
    for path in old:
        try:
            path.unlink()
        except OSError as err:
            raise WriteError(f"--overwrite: cannot remove {path}: {err.strerror or err}") from err
    remove_stale_temporaries(images)  # .<name>.<pid>.tmp of a killed job
    others = sorted(p.name for p in images.iterdir())
    log.info("--overwrite: removed %d earlier sample files from %s", len(old), images)
    if others:
        log.warning("%s still holds %d files nar sample did not write (%s); eval-samples of the folder reads "
                    "them too", images, len(others), ", ".join(others[:5]) + (" ..." if len(others) > 5 else ""))


def run_sample(job: SampleJob) -> SampleResult:
    """The whole ``nar sample`` job (see the module docstring).

    Raises:
        ConfigError: conditions that do not fit the model, a missing tokenizer, bad sampling values, an ``out``
            that is a file or holds samples (without ``overwrite``).
        CheckpointError: an unreadable checkpoint or weights that do not fit their config.
        WriteError: a picture or ``samples.json`` that could not be written (each written atomically).
    """
    parse_sampler(job.sampler, key="--sampler")  # a typo fails before any loading
    out = Path(job.out)
    check_out(out, job.overwrite)
    if job.seed < 0:
        raise ConfigError(f"--seed {job.seed}: must be >= 0")
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
    encoder = text_encoder_for(model, run, job.text_encoder, job.text_encoder_path, device) if caption else None
    if job.compile_decoder and str(device).startswith("cuda"):
        tokenizer.decoder.compile()
    log.info("sampling %d x %d with guidance %s on %s", len(conditions), job.n_per_prompt, sampling.cfg_scale, device)

    pixels = sample_images(model, tokenizer, conditions, text_encoder=encoder, sampling=sampling,
                           n_per=job.n_per_prompt, batch_size=job.batch_size, seed=job.seed, device=device,
                           sampler=job.sampler)
    if job.overwrite:
        clear_samples(out / "images")
    records, grid = write_samples(out, pixels, conditions, job.n_per_prompt, caption)
    write_text(out / "samples.json", json.dumps(
        {"ckpt": str(job.ckpt), "tokenizer": tok_path, "sampling": vars(sampling), "seed": job.seed,
         "samples": records}, indent=1, allow_nan=False))
    return SampleResult(out, grid, records, sampling)
