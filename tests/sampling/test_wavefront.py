"""The wavefront sampler against the plain loop: two cohorts in flight must decode each exactly as alone."""

from __future__ import annotations

import pytest
import torch

from model_helpers import seeded_model
from nar.errors import ConfigError
from nar.model import NARConfig, NARModel
from nar.sampling import SamplingConfig, generate
from nar.sampling.generate import decode_into
from nar.sampling.logits import with_null
from nar.sampling.wavefront import WavefrontSampler, second_seed, split_generators

SETUPS = {
    "image": dict(grid=[4, 5]),  # 8 passes
    "odd-passes": dict(grid=[3, 3]),  # 5 passes: the offset rounds down
    "video": dict(grid=[2, 3, 4]),
    "mixed-probs-branches": dict(grid=[4, 4], head_blocks=[2, 1], head_layout="parallel", mixing="probs"),
    "raster": dict(grid=[3, 3], mode="raster"),
    "par": dict(grid=[4, 4], mode="par", regions=[2, 2]),
}


def make(kind: str, dim: int = 32) -> NARModel:
    return seeded_model(dim, **SETUPS[kind])


def alone(model: NARModel, cond: torch.Tensor, sampling: SamplingConfig, seed: int,
          kv_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One cohort through the plain loop with the wavefront's two generators."""
    c, _ = with_null(model, cond, None, sampling)
    state = model.start_inference(c.shape[0], kv_dtype=kv_dtype)
    tokens = torch.zeros(cond.shape[0], model.cfg.num_cells, dtype=torch.long)
    decode_into(model, state, c, sampling, tokens, split_generators(seed, len(state.plans), "cpu"))
    return tokens.view(cond.shape[0], *model.cfg.grid)


@pytest.mark.parametrize("kind", list(SETUPS))
@pytest.mark.parametrize("cohorts", [1, 2, 5])
def test_each_cohort_decodes_as_it_would_alone(kind, cohorts):
    """Sampled (not greedy) in float32: every cohort of the stream is token for token the plain loop's with
    the same two seeded generators, whichever slot it ran in and whatever ran beside it."""
    model = make(kind)
    s = SamplingConfig(cfg_scale=2.0, temperature=0.9, top_k=20, cfg_interval=5)
    cond = torch.arange(3 * cohorts) % 5
    out = WavefrontSampler(model, 3, s)(cond, seed=11)
    assert out.shape == (3 * cohorts, *model.cfg.grid)
    for i in range(cohorts):
        assert torch.equal(out[3 * i:3 * i + 3], alone(model, cond[3 * i:3 * i + 3], s, 11 + i)), i


@pytest.mark.parametrize("kind", ["image", "video", "par"])
def test_a_float8_cache_stream_is_the_plain_loop_with_that_cache(kind):
    """With ``kv_dtype`` float8 the segments of a pass write and read their own float8 caches: each cohort is
    still token for token the plain loop's run with the same cache type (sampled, float32 arithmetic)."""
    model = make(kind)
    s = SamplingConfig(cfg_scale=2.0, temperature=0.9)
    cond = torch.arange(6) % 5
    out = WavefrontSampler(model, 3, s, kv_dtype=torch.float8_e4m3fn)(cond, seed=4)
    for i in range(2):
        assert torch.equal(out[3 * i:3 * i + 3], alone(model, cond[3 * i:3 * i + 3], s, 4 + i, torch.float8_e4m3fn))


@pytest.mark.parametrize("kind", ["image", "par"])
def test_greedy_stream_is_the_plain_loop(kind):
    model = make(kind)
    s = SamplingConfig(greedy=True, cfg_scale=3.0)
    cond = torch.tensor([0, 3, 4, 1, 2, 0, 4])  # 7 samples: three cohorts of 3, the last padded
    out = WavefrontSampler(model, 3, s)(cond)
    assert torch.equal(out, generate(model, cond, s, layout="sequence"))


def test_bf16_greedy_stream_matches_the_one_batch_sampler_on_the_cpu():
    """bf16 greedy on the CPU: the wavefront's larger matrix products round each row as the one-batch sampler's
    do here, so every token agrees (on a GPU other kernels are picked for other sizes: stated there, not here)."""
    from nar.sampling.fast import FastSampler

    model = seeded_model(64, grid=[8, 8]).to(torch.bfloat16)
    s = SamplingConfig(greedy=True, cfg_scale=2.0)
    cond = torch.arange(48) % 5
    want = torch.cat([FastSampler(model, 16, s)(cond[i:i + 16]) for i in range(0, 48, 16)])
    assert torch.equal(WavefrontSampler(model, 16, s)(cond), want)


def test_segment_pass_matches_single_passes():
    """decode_steps over two states at different steps gives each state's decode_step logits."""
    model = make("image")
    cond = torch.tensor([1, 2])
    a, b = model.start_inference(2), model.start_inference(2)
    logits_b0 = model.prefill(cond, b)
    tok = logits_b0.argmax(-1)
    a_in = model.step_input(0, a, cond=cond)
    b_in = model.step_input(1, b, tokens=tok)
    both = model.decode_steps([(a_in, 0, a), (b_in, 1, b)])
    a2, b2 = model.start_inference(2), model.start_inference(2)
    want_a = model.prefill(cond, a2)
    model.prefill(cond, b2)
    want_b = model.decode_step(tok, 1, b2)
    torch.testing.assert_close(both[0], want_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1], want_b, atol=1e-5, rtol=1e-5)


def test_seeds_and_reuse():
    """Same seed, same tokens, also from a reused sampler; another seed, other tokens; second seeds differ."""
    model = make("image")
    s = SamplingConfig(cfg_scale=2.0)
    sampler = WavefrontSampler(model, 4, s)
    cond = torch.arange(12) % 5
    first = sampler(cond, seed=3)
    assert torch.equal(sampler(cond, seed=3), first)
    assert not torch.equal(sampler(cond, seed=4), first)
    assert len({second_seed(i) for i in range(100)} | set(range(100))) == 200


def test_bad_input_is_named():
    model = make("image")
    sampler = WavefrontSampler(model, 3, SamplingConfig())
    with pytest.raises(ValueError, match="cohorts of 3"):
        list(sampler.stream([(torch.tensor([1, 2]), 0)]))
    caption = NARModel(NARConfig(dim=32, n_layer=1, n_head=4, vocab_size=32, grid=[3, 3], condition="caption",
                                 caption_len=4, caption_dim=8))
    with pytest.raises(ConfigError, match="wavefront"):
        WavefrontSampler(caption, 2)


@pytest.mark.gpu
def test_wavefront_graph_matches_eager_on_the_gpu():
    """CUDA graph replays (generators re-seeded between them) against the eager stream, same seeds, float32."""
    model = make("image").cuda()
    s = SamplingConfig(cfg_scale=2.0, top_k=8)
    cond = (torch.arange(15) % 5).cuda()
    eager = WavefrontSampler(model, 3, s, cuda_graph=False)(cond, seed=5)
    graph = WavefrontSampler(model, 3, s, cuda_graph=True)
    assert torch.equal(graph(cond, seed=5), eager)
    assert torch.equal(graph(cond, seed=5), eager)


@pytest.mark.gpu
def test_wavefront_bf16_compiled_agrees_with_the_one_batch_sampler_on_the_gpu():
    """bf16 greedy, Triton attention, compiled: the stream against the one-batch CUDA-graph sampler."""
    from nar.sampling.fast import FastSampler

    model = make("image", dim=64).cuda().to(torch.bfloat16)
    s = SamplingConfig(greedy=True, cfg_scale=2.0)
    cond = (torch.arange(48) % 5).cuda()
    want = torch.cat([FastSampler(model, 16, s)(cond[i:i + 16]) for i in range(0, 48, 16)])
    for compile in (False, True):
        got = WavefrontSampler(model, 16, s, compile=compile)(cond)
        assert (got == want).float().mean().item() > 0.97, compile


# ---------------------------------------------------------------------------------------- the sampler option
def test_sample_stream_paths_draw_what_their_samplers_draw():
    """sample_stream: 'fast' is make_sampler seeded per batch; 'wavefront' is the stream, a short last batch
    padded and trimmed; a caption model asked for the wavefront keeps the one-batch sampler."""
    from nar.sampling import make_sampler, sample_stream

    model = make("image")
    s = SamplingConfig(cfg_scale=2.0, top_k=10)
    cond = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])  # batches of 3: 3 + 3 + 2
    batches = [(cond[i:i + 3], None, 20 + i // 3) for i in range(0, 8, 3)]
    fast = list(sample_stream(model, batches, s, "fast"))
    for (c, _, seed), tokens in zip(batches, fast):
        assert torch.equal(tokens, make_sampler(model, len(c), s)(c, generator=torch.Generator().manual_seed(seed)))
    wave = list(sample_stream(model, batches, s, "wavefront"))
    assert [t.shape[0] for t in wave] == [3, 3, 2]
    for (c, _, seed), tokens in zip(batches, wave):
        assert torch.equal(tokens, alone(model, c, s, seed)[:len(c)]) if len(c) == 3 else \
            torch.equal(tokens, alone(model, torch.cat([c, c[-1:]]), s, seed)[:2])
    caption = NARModel(NARConfig(dim=32, n_layer=1, n_head=4, vocab_size=32, grid=[3, 3], condition="caption",
                                 caption_len=4, caption_dim=8)).eval()
    feats, mask = torch.randn(2, 4, 8), torch.ones(2, 4)
    one = list(sample_stream(caption, [(feats, mask, 5)], s, "wavefront"))
    assert torch.equal(one[0], list(sample_stream(caption, [(feats, mask, 5)], s, "fast"))[0])


def test_sampler_option_names_its_error():
    from nar.runs.config import EvalConfig
    from nar.sampling import parse_sampler

    assert parse_sampler("fast") == frozenset() and parse_sampler("wavefront+compile") == {"wavefront", "compile"}
    for bad in ("wavefrnt", "compile+compile", ""):
        with pytest.raises(ConfigError, match="sampler"):
            parse_sampler(bad)
    with pytest.raises(ConfigError, match="sampler"):
        EvalConfig(sampler="turbo")


def test_a_resumed_wavefront_evaluation_regenerates_missing_chunks_exactly(tmp_path):
    """stream_chunks through the wavefront: delete chunk files of a finished run and run again: the chunks on
    disk are read back, the missing ones come out byte for byte as before (each depends on its seed alone),
    and the consumers see every chunk in chunk order, as in the uninterrupted run."""
    from nar.lightning.generation import ChunkGenerator, chunk_path, load_chunk, stream_chunks

    class Identity(torch.nn.Module):  # tokens as pixels: enough to compare chunks
        def decode(self, tokens):
            return tokens.float()[:, None].expand(-1, 3, -1, -1) / 32 * 2 - 1

    model = make("image")
    s = SamplingConfig(cfg_scale=2.0)
    conds = torch.arange(17) % 5
    chunks = list(range(6))  # 3 + 3 + 3 + 3 + 3 + 2
    seen: dict[int, torch.Tensor] = {}
    order: list[int] = []

    def record(c, px, _):
        seen[c] = px.clone()
        order.append(c)

    def run(gen, *extra):
        order.clear()
        return stream_chunks(gen, conds, None, chunks, 3, 7, [record, *extra], folder=tmp_path)

    assert run(ChunkGenerator(model, Identity(), s, torch.device("cpu"), sampler="wavefront")) == 0
    assert order == chunks
    first = {c: load_chunk(chunk_path(tmp_path, c), len(seen[c]))[0] for c in chunks}
    for c in (1, 4, 5):
        chunk_path(tmp_path, c).unlink()
    gen = ChunkGenerator(model, Identity(), s, torch.device("cpu"), sampler="wavefront")
    assert run(gen) == 3 and gen.generated == 3 + 3 + 2
    assert order == chunks  # chunks 2 and 3 wait for chunk 1, which is generated
    for c in chunks:
        assert torch.equal(load_chunk(chunk_path(tmp_path, c), len(seen[c]))[0], first[c]), c
        assert torch.equal(seen[c], first[c]), c

    # A stored chunk that vanishes between the check and its turn is generated on its own, the same bytes.
    chunk_path(tmp_path, 1).unlink()

    def lose_chunk_3(c, px, _):
        if c == 1:
            chunk_path(tmp_path, 3).unlink()

    gen = ChunkGenerator(model, Identity(), s, torch.device("cpu"), sampler="wavefront")
    assert run(gen, lose_chunk_3) == 4 and gen.generated == 3 + 3
    assert order == chunks
    assert torch.equal(seen[3], first[3]) and torch.equal(load_chunk(chunk_path(tmp_path, 3), 3)[0], first[3])

    # The short last chunk alone (the only one missing, or a rank's only chunk): drawn padded to the list's batch
    # size, as in the full run, so the same samples.
    chunk_path(tmp_path, 5).unlink()
    gen = ChunkGenerator(model, Identity(), s, torch.device("cpu"), sampler="wavefront")
    assert run(gen) == 5 and gen.generated == 2 and torch.equal(seen[5], first[5])
    alone: dict[int, torch.Tensor] = {}
    stream_chunks(ChunkGenerator(model, Identity(), s, torch.device("cpu"), sampler="wavefront"), conds, None, [5], 3,
                  7, [lambda c, px, _: alone.__setitem__(c, px.clone())])
    assert torch.equal(alone[5], first[5])
    fast = ChunkGenerator(model, Identity(), s, torch.device("cpu"), sampler="fast")
    other = tmp_path / "fast"
    stream_chunks(fast, conds, None, chunks, 3, 7, [], folder=other)
    assert not torch.equal(load_chunk(chunk_path(other, 0), 3)[0], first[0])  # other draws, same distribution
