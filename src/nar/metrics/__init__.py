"""Evaluation metrics as torchmetrics ``Metric``s whose states sync exactly across processes.

- :class:`ImageFidelity`: FID (+ IS, + precision/recall) with the standard FID InceptionV3, offline.
- :class:`FrechetVideoDistance` (local I3D TorchScript) or :class:`FVDProxyInception` (never called FVD).
- :class:`GenEvalShapes`: GenEval-style text alignment on the ``shapes`` domain; optional
  :class:`OpenCLIPScore` from a local open-clip checkpoint.
- :class:`GaussianStats`: ADM-evaluator ``.npz`` reference statistics; :func:`frechet_distance`.
"""

from nar.metrics.clip_score import OpenCLIPScore
from nar.metrics.fidelity import GaussianPairMetric, ImageFidelity, default_extractor, to_uint8
from nar.metrics.frechet import GaussianStats, frechet_distance, moments_from_sums
from nar.metrics.fvd import FrechetVideoDistance, FVDProxyInception
from nar.metrics.inception import (
    InceptionV3Extractor,
    cache_dir,
    convert_fid_helper_inception,
    default_inception_weights,
)
from nar.metrics.text_alignment import GenEvalShapes

__all__ = [
    "FVDProxyInception",
    "FrechetVideoDistance",
    "GaussianPairMetric",
    "GaussianStats",
    "GenEvalShapes",
    "ImageFidelity",
    "InceptionV3Extractor",
    "OpenCLIPScore",
    "cache_dir",
    "convert_fid_helper_inception",
    "default_extractor",
    "default_inception_weights",
    "frechet_distance",
    "moments_from_sums",
    "to_uint8",
]
