"""How much a lower-precision copy of a generator (e.g. :func:`nar.model.fp8.quantize_fp8`), or a float8 KV
cache (``kv_dtype``), changes it.

Two figures a reader can check:

* greedy token agreement: both models decode the same labels greedily; the fraction of equal tokens and of
  samples equal in every token. One flipped near-tie changes every later token of a sample, so this is a
  strict figure: it says how often the outputs are the same, not how different they are.
* likelihood of the reference's own samples: the reference draws grids with the given sampling, and the
  teacher-forced pass (the exact likelihood of a grid) scores those same grids under both models, in bits
  per token. A candidate that lost accuracy assigns the reference's samples less probability. With a
  float8 KV cache the grids are scored through the decoding passes themselves (:func:`decode_bits_per_token`,
  the same likelihood, read from the caches a sampler uses), for the reference and the candidate alike.
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
def decode_bits_per_token(model: NARModel, tokens: torch.Tensor, labels: torch.Tensor,
                          kv_dtype: torch.dtype | None = None) -> float:
    """As :func:`bits_per_token`, through the decoding passes: every pass is fed the cells of ``tokens`` its
    predecessor produced, and its logits score the cells it produces (the model's unguided conditional
    distribution). The caches are the samplers' (``kv_dtype`` as :meth:`NARModel.start_inference` takes it),
    so this is the likelihood a float8 cache actually gives."""
    device = _device(model)
    tokens, labels = tokens.to(device).flatten(1), labels.to(device)  # [B, N]
    state = model.start_inference(tokens.shape[0], layout="decode", device=device, kv_dtype=kv_dtype)
    nats = torch.zeros((), dtype=torch.float64, device=device)
    for i, plan in enumerate(state.plans):
        if i == 0:
            logits = model.prefill(labels, state)
        else:
            logits = model.decode_step(tokens[:, state.plans[i - 1].outputs], i, state)
        nats += F.cross_entropy(logits.float().transpose(1, 2), tokens[:, plan.outputs], reduction="sum").double()
    return nats.item() / tokens.numel() / math.log(2)


@torch.no_grad()
def precision_report(reference: NARModel, candidate: NARModel, labels: torch.Tensor, sampling: SamplingConfig,
                     generator_seed: int = 0, candidate_kv_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Compare ``candidate`` (a lower-precision copy) with ``reference`` on class ids ``labels [B]``.

    Greedy decoding uses ``sampling`` with ``greedy=True`` (same CFG scale and interval). The samples
    scored are drawn from ``reference`` with ``sampling`` itself and a generator seeded with
    ``generator_seed`` on the reference's device. Both models are put in eval mode for the call (their
    flags are restored after) and run without gradients. ``candidate_kv_dtype`` (``torch.float8_e4m3fn``)
    decodes the candidate with a float8 KV cache, and scores both models through their decoding passes
    (:func:`decode_bits_per_token`); ``candidate`` may then be ``reference`` itself.

    Returns:
        ``greedy_token_agreement`` (fraction of equal tokens), ``greedy_sample_identical`` (fraction of
        samples equal in every token), ``ref_bits_per_token``, ``candidate_bits_per_token``,
        ``delta_bits_per_token`` (candidate minus reference), ``delta_percent`` (of the reference's),
        ``samples`` (``B``).
    Raises:
        ValueError: a model is not class-conditional, ``labels`` are not class ids ``[B]``, ``sampling`` is
            greedy (the likelihood needs drawn samples), or the models differ in shape.
    """
    for name, model in (("reference", reference), ("candidate", candidate)):
        if model.cfg.condition != "class":
            raise ValueError(f"precision_report takes class-conditional models (the likelihood is scored given "
                             f"class ids), the {name} has condition={model.cfg.condition!r}")
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
        cand_greedy = generate(candidate, labels.to(_device(candidate)), greedy,
                               kv_dtype=candidate_kv_dtype).to(ref_greedy.device)
        same = (ref_greedy == cand_greedy).flatten(1)  # [B, N]

        generator = torch.Generator(device=_device(reference)).manual_seed(generator_seed)
        samples = generate(reference, labels.to(_device(reference)), sampling, generator=generator)
        if candidate_kv_dtype is None:
            ref_bits = bits_per_token(reference, samples, labels)
            cand_bits = bits_per_token(candidate, samples, labels)
        else:
            ref_bits = decode_bits_per_token(reference, samples, labels)
            cand_bits = decode_bits_per_token(candidate, samples, labels, candidate_kv_dtype)

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
