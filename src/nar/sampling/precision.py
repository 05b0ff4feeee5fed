"""How much a lower-precision copy of a generator (e.g. :func:`nar.model.fp8.quantize_fp8`) changes it.

Two figures a reader can check:

* greedy token agreement: both models decode the same labels greedily; the fraction of equal tokens and of
  samples equal in every token. One flipped near-tie changes every later token of a sample, so this is a
  strict figure: it says how often the outputs are the same, not how different they are.
* likelihood of the reference's own samples: the reference draws grids with the given sampling, and the
  teacher-forced pass (the exact likelihood of a grid) scores those same grids under both models, in bits
  per token. A candidate that lost accuracy assigns the reference's samples less probability.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F

from nar.model import NARModel
from nar.sampling.generate import generate
from nar.sampling.logits import SamplingConfig


@contextmanager
def _eval_mode(*models: NARModel) -> Iterator[None]:
    """Every module of ``models`` in eval mode inside; each module's own flag restored afterwards."""
    flags = {m: m.training for model in models for m in model.modules()}
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def _device(model: NARModel) -> torch.device:
    return model.tok_embeddings.weight.device


def bits_per_token(model: NARModel, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log2-likelihood of ``tokens [B, *grid]`` given class ids ``labels [B]`` under the
    teacher-forced pass (unguided: the model's own conditional distribution), float32."""
    device = _device(model)
    tokens = tokens.to(device).flatten(1)  # [B, N]
    logits = model.forward_train(tokens, labels.to(device)).float()  # [B, N, V]
    nats = F.cross_entropy(logits.transpose(1, 2), tokens)
    return nats.item() / math.log(2)


@torch.no_grad()
def precision_report(reference: NARModel, candidate: NARModel, labels: torch.Tensor, sampling: SamplingConfig,
                     generator_seed: int = 0) -> dict[str, float]:
    """Compare ``candidate`` (a lower-precision copy) with ``reference`` on class ids ``labels [B]``.

    Greedy decoding uses ``sampling`` with ``greedy=True`` (same CFG scale and interval). The samples
    scored are drawn from ``reference`` with ``sampling`` itself and a generator seeded with
    ``generator_seed`` on the reference's device. Both models are put in eval mode for the call (their
    flags are restored after) and run without gradients.

    Returns:
        ``greedy_token_agreement`` (fraction of equal tokens), ``greedy_sample_identical`` (fraction of
        samples equal in every token), ``ref_bits_per_token``, ``candidate_bits_per_token``,
        ``delta_bits_per_token`` (candidate minus reference), ``delta_percent`` (of the reference's),
        ``samples`` (``B``).
    Raises:
        ValueError: ``labels`` are not class ids ``[B]``, ``sampling`` is greedy (the likelihood needs
            drawn samples), or the models differ in shape.
    """
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be class ids [B] (integers), got {labels.dtype} of shape {tuple(labels.shape)}")
    if sampling.greedy:
        raise ValueError("sampling must draw samples (greedy=False) for the likelihood figure; greedy decoding is "
                         "measured separately, got greedy=True")
    ref_cfg, cand_cfg = reference.cfg, candidate.cfg
    for key in ("grid", "vocab_size", "mode", "condition"):
        if getattr(ref_cfg, key) != getattr(cand_cfg, key):
            raise ValueError(f"the models differ in {key}: reference {getattr(ref_cfg, key)!r}, "
                             f"candidate {getattr(cand_cfg, key)!r}")
    with _eval_mode(reference, candidate):
        greedy = replace(sampling, greedy=True)
        ref_greedy = generate(reference, labels.to(_device(reference)), greedy)  # [B, *grid]
        cand_greedy = generate(candidate, labels.to(_device(candidate)), greedy).to(ref_greedy.device)
        same = (ref_greedy == cand_greedy).flatten(1)  # [B, N]

        generator = torch.Generator(device=_device(reference)).manual_seed(generator_seed)
        samples = generate(reference, labels.to(_device(reference)), sampling, generator=generator)
        ref_bits = bits_per_token(reference, samples, labels)
        cand_bits = bits_per_token(candidate, samples, labels)

    delta = cand_bits - ref_bits
    if ref_bits != 0:
        percent = 100.0 * delta / ref_bits
    else:  # a reference certain of its samples: any loss is infinitely many percent
        percent = 0.0 if delta == 0 else math.copysign(math.inf, delta)
    return {
        "greedy_token_agreement": same.float().mean().item(),
        "greedy_sample_identical": same.all(dim=1).float().mean().item(),
        "ref_bits_per_token": ref_bits,
        "candidate_bits_per_token": cand_bits,
        "delta_bits_per_token": delta,
        "delta_percent": percent,
        "samples": float(labels.shape[0]),
    }
