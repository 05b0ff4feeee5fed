"""The metric objects an evaluation asks for by name (``fid``, ``is``, ``pr``, ``kid``, ``sfid``, ``fvd``,
``fvd_proxy``)."""

from __future__ import annotations

import logging
from typing import Any

from nar.metrics.fidelity import IMAGE_METRICS

__all__ = ["IMAGE_METRICS", "VIDEO_METRICS", "build_metrics", "reference_keys"]

log = logging.getLogger(__name__)

VIDEO_METRICS = ("fvd", "fvd_proxy")


def build_metrics(names: list[str] | tuple[str, ...], *, video: bool, inception_weights: str = "", i3d_path: str = "",
                  reference_stats: str = "", have_real: bool = True) -> dict[str, Any]:
    """torchmetrics objects for ``names``, keyed ``image`` / ``fvd``; real statistics survive ``reset()``.

    Images: one :class:`~nar.metrics.ImageFidelity` computing every asked image metric (``is`` needs an
    Inception with its classifier, ``inception_weights``; ``pr``/``kid`` need real images, not only statistics:
    ``eval.real_root`` or a reference batch that holds ``arr_0``; ``sfid`` with a reference needs its
    ``mu_s``/``sigma_s``). Missing pieces were refused at start (:mod:`nar.workflows.preflight`) unless
    ``allow_degraded``; here they are dropped with a warning.
    Videos: FVD with a local I3D (``i3d_path``), else the Inception proxy, reported under its own name.
    """
    from nar.metrics import FrechetVideoDistance, FVDProxyInception, ImageFidelity

    wanted = list(names)
    out: dict[str, Any] = {}
    if video:
        if any(m in wanted for m in VIDEO_METRICS):
            out["fvd"] = (FrechetVideoDistance(i3d_path, reset_real_features=False) if i3d_path
                          else FVDProxyInception(reset_real_features=False))
        return out
    image = [m for m in wanted if m in IMAGE_METRICS]
    if "is" in image and not inception_weights:
        log.warning("eval.metrics: skipping 'is' — the default FID network has no classifier; "
                    "set eval.inception_weights to a torch-fidelity Inception file with its fc layer")
        image.remove("is")
    for name in ("pr", "kid"):
        if name in image and reference_stats and not have_real:
            log.warning("eval.metrics: skipping %r — it needs real images' features (eval.real_root, or a "
                        "reference batch with arr_0)", name)
            image.remove(name)
    if "sfid" in image and reference_stats and not reference_keys(reference_stats) >= {"mu_s", "sigma_s"}:
        log.warning("eval.metrics: skipping 'sfid' — %s has no mu_s/sigma_s", reference_stats)
        image.remove("sfid")
    if image:
        metric = ImageFidelity(metrics=image, reset_real_features=False, inception_weights=inception_weights or None)
        if reference_stats:
            metric.set_reference(reference_stats)
        out["image"] = metric
    return out


def reference_keys(path: str) -> set[str]:
    """The arrays an ``.npz`` reference batch holds (``mu``, ``sigma``, ``mu_s``, ``sigma_s``, ``arr_0``…); a
    damaged or non-npz file is a :class:`~nar.errors.DataError` naming it."""
    from nar.metrics.frechet import open_npz

    with open_npz(path) as data:
        return set(data.keys())
