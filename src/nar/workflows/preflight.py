"""Checks a run makes before it spends anything: every input it names exists and fits, and every piece it
asks for can be had (or the config says it may run without it).

Each problem is a :class:`~nar.errors.ConfigError` naming the key. A piece that is asked for but missing
("degraded": a perceptual loss without VGG weights, IS without an Inception classifier, FID with no real
images) stops the run too unless ``allow_degraded: true``; then it is logged and listed in the run summary.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nar.errors import ConfigError
from nar.runs.config import TokenizerRunConfig, TrainConfig

if TYPE_CHECKING:
    from nar.tokenizers.config import VQConfig

log = logging.getLogger(__name__)

FIDELITY = ("fid", "is", "pr", "kid", "sfid", "fvd", "fvd_proxy")


def _gate(run: TrainConfig | TokenizerRunConfig, degraded: list[str]) -> list[str]:
    if degraded and not run.allow_degraded:
        raise ConfigError("asked for but not available:\n  " + "\n  ".join(degraded)
                          + "\nprovide them, drop them from the config, or set allow_degraded=true to run without")
    for piece in degraded:
        log.warning("degraded (allow_degraded): %s", piece)
    return degraded


def tokenizer_config(path: str, config: str = "") -> VQConfig:
    """The config of the tokenizer ``path`` names (a file or a preset), read at start (the tokenizer is not built)."""
    from nar.tokenizers.io import read_tokenizer_config

    if not Path(path).is_file() and path.endswith((".pt", ".pth", ".ckpt", ".bin")):
        raise ConfigError(f"tokenizer file not found: {path}", key="tokenizer.path")
    return read_tokenizer_config(path, config=config or None)


def check_tokenizer_fits(grid: list[int], tokenizer: VQConfig, name: str, key: str | None = "tokenizer.path") -> None:
    """Whether the tokenizer ``name`` (its config ``tokenizer``) decodes the token grid ``grid``: the same number of
    axes, else :class:`ConfigError` (its decoder takes codes of its own kind; ``key`` the config key it names); a
    warning when the grid decodes to another size than the tokenizer was trained on (not for an official file, which
    stores no size: LlamaGen's VQ-16 decodes 256 and 512 px alike). ``nar train``/``nar evaluate``
    (here, at start) and ``nar sample`` (before its first batch) ask alike."""
    grid = list(grid)
    axes = len(tokenizer.grid)  # 2: an image tokenizer, 3: a video one
    if len(grid) != axes:
        wanted = {2: "an image tokenizer", 3: "a video tokenizer"}.get(
            len(grid), "a tokenizer nar has none of (image ones: 2 axes, video ones: 3)")
        kind = "an image" if tokenizer.kind == "image" else "a video"
        raise ConfigError(f"{name} is {kind} tokenizer (codes on {axes} axes), but model.grid {grid} has {len(grid)} "
                          f"axes, whose samples it cannot decode; a {len(grid)}-axis grid needs {wanted}", key=key)
    if getattr(tokenizer, "image_size_guessed", False):  # an official file: no size stored to hold the grid to
        return
    factor = tokenizer.spatial_downsample
    *frames, height, width = tokenizer.decoded_size(grid)
    made = f"{height}x{width}"
    trained = f"{tokenizer.image_size}x{tokenizer.image_size}"
    if axes == 3:
        made = f"{frames[0]} frames of {made}"
        trained = f"{tokenizer.num_frames} frames of {trained}"
    if made != trained:
        log.warning("model.grid %s decodes through %s (downsampling %s) to samples of %s, but the tokenizer was "
                    "trained on %s: its decoder is asked for a size it did not learn; set model.grid to %s unless "
                    "another size is meant", grid, name,
                    f"{tokenizer.temporal_factor}x{factor}x{factor}" if axes == 3 else f"{factor}x{factor}", made,
                    trained, list(tokenizer.grid))


def _meta_if_any(root: str) -> dict[str, Any]:
    """``root``'s meta.json where it has a readable one (an evaluation that reads no data may still name the token
    folder its run trained on), else nothing."""
    from nar.data.shards import read_meta
    from nar.errors import DataError

    if not root or not (Path(root) / "meta.json").is_file():
        return {}
    try:
        return read_meta(root)
    except DataError:
        return {}


def check_generator_run(cfg: TrainConfig, *, needs_data: bool = True) -> list[str]:
    """Start-time checks of a generator run (training or evaluation); returns the degraded pieces allowed."""
    from nar.data.shards import holds_pixels, read_meta
    from nar.metrics.registry import reference_keys

    degraded: list[str] = []
    meta: dict[str, Any] = {}
    e = cfg.eval
    if needs_data and not cfg.data.root:
        raise ConfigError("empty; point it at a shard folder (e.g. made by `nar data tokens`)", key="data.root")
    if needs_data:
        meta = read_meta(cfg.data.root)  # DataError naming <root>/meta.json, before the run folder is made
        from nar.data.tokens import stored_caption_cleaning

        stored = stored_caption_cleaning(meta)  # how `nar data tokens` cleaned its captions
        if meta.get("caption_features") and cfg.data.caption_features and cfg.text.clean_captions != stored:
            # the prompts a run encodes itself (validation, sampling) must reach the model as its features did
            raise ConfigError(f"{cfg.text.clean_captions!r}, but the caption features in {cfg.data.root} were made "
                              f"from captions cleaned {stored!r} (nar data tokens --clean-captions); set "
                              f"text.clean_captions={stored}", key="text.clean_captions")
    # networks the metrics load at the first decoding validation: a wrong path would fail after training
    if e.inception_weights and not Path(e.inception_weights).is_file():
        raise ConfigError(f"file not found: {e.inception_weights}", key="eval.inception_weights")
    if e.i3d_path and not Path(e.i3d_path).expanduser().is_file():  # read as FrechetVideoDistance reads it
        raise ConfigError(f"file not found: {e.i3d_path}", key="eval.i3d_path")
    asked = [m for m in e.metrics if m in FIDELITY]
    if cfg.tokenizer.path:
        tokenizer = tokenizer_config(cfg.tokenizer.path, cfg.tokenizer.config)
        if cfg.model.vocab_size > tokenizer.codebook_size:
            raise ConfigError(f"{cfg.model.vocab_size}, but the tokenizer {cfg.tokenizer.path} has only "
                              f"{tokenizer.codebook_size} codes (the generator would sample ids it cannot decode)",
                              key="model.vocab_size")
        from nar.metrics.fvd import I3D_MIN_FRAMES

        if "fvd" in asked and e.i3d_path and tokenizer.kind == "video" and tokenizer.num_frames < I3D_MIN_FRAMES:
            raise ConfigError(f"fvd with eval.i3d_path: the tokenizer decodes clips of {tokenizer.num_frames} frames, "
                              f"the I3D takes at least {I3D_MIN_FRAMES}; score fvd_proxy instead", key="eval.metrics")
        check_tokenizer_fits(cfg.model.grid, tokenizer, cfg.tokenizer.path)
        made_with = (meta if needs_data else _meta_if_any(cfg.data.root)).get("tokenizer_sha256")
        if made_with and Path(cfg.tokenizer.path).is_file():
            from nar.data.tokens import file_sha256

            if file_sha256(cfg.tokenizer.path) != made_with:  # ~0.3 s for a VQ-16 file, once at start
                log.warning("tokenizer.path %s is not the file the token shards in %s were made with (its content "
                            "differs from meta.json's tokenizer_sha256 %s…, e.g. retrained since): the samples are "
                            "decoded by another decoder than the codes were made for, and their scores mean little "
                            "unless only the decoder was fine-tuned on the same codebook", cfg.tokenizer.path,
                            cfg.data.root, made_with[:12])
        from nar.tokenizers import PRESETS

        if cfg.tokenizer.path in PRESETS and not Path(cfg.tokenizer.path).exists():  # load_tokenizer's rule
            log.warning("tokenizer.path %s is a preset name, not a file: the tokenizer is built with random weights, "
                        "so decoded samples and their scores (and, on pixel data, the tokens trained on) show only "
                        "what an untrained tokenizer makes; point tokenizer.path at a trained tokenizer file",
                        cfg.tokenizer.path)
    if asked and not cfg.tokenizer.path:
        degraded.append(f"eval.metrics {asked}: no tokenizer.path to decode samples to pixels, so no scores")
    if e.real_root:
        from nar.data.shards import resolve_split

        real_meta = read_meta(e.real_root)  # DataError naming the folder when it is not a dataset
        real_split = resolve_split(real_meta, e.real_split, root=e.real_root)  # val/test by role, else the splits
    reference: set[str] = set()
    if e.reference_stats:
        path = Path(e.reference_stats)
        if not path.is_file():
            raise ConfigError(f"file not found: {path}", key="eval.reference_stats")
        reference = reference_keys(str(path))
        if not {"mu", "sigma"} <= reference:
            raise ConfigError(f"{path} has no mu/sigma (keys {sorted(reference)})", key="eval.reference_stats")
        if e.num_real and "arr_0" in reference and any(m in asked for m in ("pr", "kid")) and not e.allow_fewer:
            from nar.metrics.sources import npz_sample_count

            # pr/kid take their real images from the reference's arr_0 (ADM's: 10k): refused now, not after every
            # sample is generated
            held = npz_sample_count(path)
            if held is not None and e.num_real > held:
                raise ConfigError(f"{e.num_real}, but eval.reference_stats {path} holds {held} images (arr_0), the "
                                  f"real samples of pr/kid; lower it (0 = all {held}) or set "
                                  "eval.allow_fewer=true", key="eval.num_real")
    if e.labels == "real":
        if cfg.model.condition != "class":
            raise ConfigError(f"real gives class ids, but model.condition is {cfg.model.condition!r} (its samples "
                              "take the validation captions); use balanced", key="eval.labels")
        from nar.lightning.callbacks.decoding import real_condition_ids

        # the classes of the real samples, read now (labels.npy or cls members): a refusal costs no sampling
        real_condition_ids(e, cfg.model.num_classes, e.num_samples)
    if e.real_root and asked and cfg.tokenizer.path and not e.reference_stats and not e.allow_fewer:
        # the real side of the scores is read at the first decoding validation: refused now, not after the steps
        # before it (a run that scores nothing, or only decodes nothing, never reads it)
        held, wanted = real_meta["splits"][real_split].get("samples"), e.num_real or e.num_samples
        if isinstance(held, int) and 0 <= held < wanted:
            raise ConfigError(f"{wanted} real samples asked for, but eval.real_root {e.real_root} holds {held} in "
                              f"its {real_split!r} split; lower eval.num_real (when unset, eval.num_samples is asked "
                              "for), point eval.real_root at a larger split, or set eval.allow_fewer=true",
                              key="eval.num_real")
    video = len(cfg.model.grid) == 3
    # pixels tokenized as the run trains: without eval.real_root or reference statistics the val samples themselves
    # are the real side (FrontierDecodingCallback)
    pixel_data = holds_pixels(meta if needs_data else cfg.data.root) and not e.reference_stats
    if cfg.tokenizer.path and not video:
        if "fid" in asked and not e.real_root and not e.reference_stats and not pixel_data:
            degraded.append("eval.metrics fid: no eval.real_root or eval.reference_stats; the reference would be "
                            "the tokenizer's reconstructions of val tokens (no tokenizer error in the score)")
        if "is" in asked and not e.inception_weights:
            degraded.append("eval.metrics is: eval.inception_weights (an Inception with its classifier) is not set")
        for name in ("pr", "kid"):
            if name in asked and not e.real_root and "arr_0" not in reference and not pixel_data:
                degraded.append(f"eval.metrics {name}: needs real images' features (eval.real_root, or an "
                                "eval.reference_stats batch that holds its images as arr_0)")
        if "sfid" in asked and e.reference_stats and not {"mu_s", "sigma_s"} <= reference:
            degraded.append(f"eval.metrics sfid: eval.reference_stats {e.reference_stats} has no mu_s/sigma_s "
                            "(spatial statistics)")
        elif "sfid" in asked and not e.reference_stats and not e.real_root and not pixel_data:
            degraded.append("eval.metrics sfid: no eval.real_root or eval.reference_stats with mu_s/sigma_s")
    if cfg.tokenizer.path and video and any(m in asked for m in ("fvd", "fvd_proxy")) and not e.real_root \
            and not pixel_data:
        degraded.append("eval.metrics fvd: no eval.real_root; the reference would be tokenizer reconstructions")
    if video and "fvd" in asked and not e.i3d_path:
        degraded.append("eval.metrics fvd: no eval.i3d_path; scored with the Inception proxy (fvd_proxy_inception)")
    return _gate(cfg, degraded)


def check_tokenizer_run(cfg: TokenizerRunConfig) -> list[str]:
    """Start-time checks of a tokenizer run; returns the degraded pieces allowed."""
    degraded: list[str] = []
    loss = cfg.loss
    if loss.perceptual_weight > 0 and not (loss.perceptual_vgg_path and Path(loss.perceptual_vgg_path).is_file()):
        degraded.append(f"loss.perceptual_weight {loss.perceptual_weight}: loss.perceptual_vgg_path "
                        f"{loss.perceptual_vgg_path or '(unset)'} is not a VGG16 weights file; no perceptual loss")
    if cfg.val.inception_weights and not Path(cfg.val.inception_weights).is_file():
        raise ConfigError(f"file not found: {cfg.val.inception_weights}", key="val.inception_weights")
    return _gate(cfg, degraded)
