"""The shapes domain: ground truth scores 1.0, noise scores ~0, scenes round-trip, prompts follow GenEval."""

from __future__ import annotations

import numpy as np
import pytest

from nar.errors import ConfigError
from nar.shapes import (
    COLORS,
    FAMILIES,
    PALETTE,
    Primitive,
    Scene,
    caption,
    detect,
    evaluate,
    parse_prompt,
    read_scene,
    render_scene,
    sample_scene,
    score,
)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("family", FAMILIES)
def test_ground_truth_scores_one(family, size):
    rng = np.random.default_rng(1)
    for _ in range(60):
        scene = sample_scene(rng, family)
        correct, reason = evaluate(scene.spec, render_scene(scene, size=size))
        assert correct, (scene.prompt, reason)
        assert read_scene(render_scene(scene, size=size)).clutter == 0.0


@pytest.mark.parametrize("size", [64, 128])
def test_detector_recovers_every_primitive(size):
    rng = np.random.default_rng(2)
    for _ in range(40):
        scene = sample_scene(rng)
        found = sorted((d.shape, d.color) for d in detect(render_scene(scene, size=size)))
        assert found == sorted((p.shape, p.color) for p in scene.primitives)


def test_noise_scores_near_zero():
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(100):
        scene = sample_scene(rng)
        hits += score(scene.spec, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    # blocky noise, like decoded random tokens (8x8 patches of random colour)
    for _ in range(100):
        scene = sample_scene(rng)
        blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        hits += score(scene.spec, np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8)))
    assert hits / 200 < 0.05


_PALETTE_AND_WHITE = np.asarray([PALETTE[c] for c in COLORS] + [(255, 255, 255)], dtype=np.float64)  # [C + 1, 3]


def _decoded_like(image: np.ndarray, rng: np.random.Generator, blur: bool = True) -> np.ndarray:
    """Mimic a decoder: a 3x3 box blur (blended colours at every edge) and a little pixel noise.

    The blur is harsher than the tiny tokenizer's (it rounds a 6 px square into a disc), so renders are
    checked with the pixel noise only."""
    out = image.astype(np.float64)
    if blur:
        padded = np.pad(out, ((1, 1), (1, 1), (0, 0)), mode="edge")
        h, w = image.shape[:2]
        out = sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
    return np.clip(out + rng.normal(0, 8, out.shape), 0, 255).astype(np.uint8)


def _block_noise(rng: np.random.Generator, size: int, patch: int) -> np.ndarray:
    """Random tokens, decoded: every ``patch``-pixel tile a random palette colour or white."""
    tiles = _PALETTE_AND_WHITE[rng.integers(len(_PALETTE_AND_WHITE), size=(size // patch, size // patch))]
    return np.kron(tiles, np.ones((patch, patch, 1))).astype(np.uint8)


def _fragments(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """Palette-coloured fragments on white: random rectangles, discs and wedges of object-like sizes."""
    image = np.full((size, size, 3), 255, dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size] + 0.5
    for _ in range(count):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.03, 0.2, 2) * size
        u, v = (xx - cx) / rx, (yy - cy) / ry
        kind = rng.integers(3)
        mask = (np.abs(u) <= 1) & (np.abs(v) <= 1) if kind == 0 else (u * u + v * v <= 1) if kind == 1 else (u > 0) & (u + v < 1) & (v > -1)
        image[mask] = PALETTE[COLORS[rng.integers(len(COLORS))]]
    return image


@pytest.mark.parametrize("size,patch", [(32, 4), (64, 8)])
def test_decoded_like_noise_scores_near_zero_while_renders_score_one(size, patch):
    """The metric's floor: decoded random tokens (blocky palette noise, a patchwork of fragments) must not
    pass "an X is present" or "X left of Y" by picking suitable pieces, while the scenes' renders pass."""
    rng = np.random.default_rng(10)
    scenes = [sample_scene(rng, FAMILIES[i % len(FAMILIES)]) for i in range(60)]
    assert all(score(s.spec, _decoded_like(render_scene(s, size=size), rng, blur=False)) for s in scenes)
    hits = 0
    for scene in scenes:
        hits += score(scene.spec, _decoded_like(_block_noise(rng, size, patch), rng))
        hits += score(scene.spec, _decoded_like(_fragments(rng, size, count=int(rng.integers(12, 30))), rng))
    assert hits / (2 * len(scenes)) < 0.05


def test_unexplained_clutter_fails_a_correct_render():
    rng = np.random.default_rng(11)
    scene = sample_scene(rng, "two_object")
    image = render_scene(scene, size=64)
    background = np.flatnonzero((image == 255).all(-1))

    def speckled(fraction: float) -> np.ndarray:
        noisy = image.reshape(-1, 3).copy()
        noisy[rng.choice(background, int(fraction * image.shape[0] * image.shape[1]), replace=False)] = PALETTE["red"]
        return noisy.reshape(image.shape)

    assert score(scene.spec, speckled(0.01))  # a few stray pixels are tolerated
    correct, reason = evaluate(scene.spec, speckled(0.15))
    assert not correct and "cluttered" in reason


def test_blank_image_fails_every_family():
    rng = np.random.default_rng(4)
    blank = np.full((64, 64, 3), 255, dtype=np.uint8)
    assert not any(score(sample_scene(rng, f), blank) for f in FAMILIES)


def test_counting_rejects_one_too_many():
    rng = np.random.default_rng(5)
    scene = sample_scene(rng, "counting")
    n = scene.spec["include"][0]["count"]
    # Ask for one fewer: the exclude rule (count >= n) must fail it.
    fewer = {**scene.spec, "include": [{**scene.spec["include"][0], "count": n - 1}],
             "exclude": [{"class": scene.spec["include"][0]["class"], "count": n}]}
    assert not score(fewer, render_scene(scene))


def test_position_swapped_relation_fails():
    rng = np.random.default_rng(6)
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    for _ in range(20):
        scene = sample_scene(rng, "position")
        inc = scene.spec["include"]
        swapped = {**scene.spec, "include": [inc[0], {**inc[1], "position": [opposite[inc[1]["position"][0]], 0]}]}
        assert not score(swapped, render_scene(scene))


def test_wrong_color_fails():
    scene = Scene(
        primitives=(Primitive("circle", "red", 0.5, 0.5, 0.15),),
        family="colors", prompt="", spec={"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "blue"}]},
    )
    assert not score(scene, render_scene(scene))


def test_json_round_trip_and_caption():
    rng = np.random.default_rng(7)
    for family in FAMILIES:
        scene = sample_scene(rng, family)
        assert Scene.from_json(scene.to_json()) == scene
        assert caption(scene) == scene.prompt and scene.prompt.startswith("a photo of")


def test_sampling_is_seeded():
    a = sample_scene(np.random.default_rng(8))
    b = sample_scene(np.random.default_rng(8))
    assert a == b


def test_bad_values_raise():
    with pytest.raises(ConfigError, match="family"):
        sample_scene(np.random.default_rng(0), "nonsense")
    with pytest.raises(ConfigError, match="colour"):
        Primitive("circle", "mauve", 0.5, 0.5, 0.1)


def test_prompt_parses_back_to_its_spec():
    rng = np.random.default_rng(9)
    for _ in range(200):
        scene = sample_scene(rng)
        assert parse_prompt(scene.prompt) == scene.spec
    with pytest.raises(ConfigError, match="shapes prompt"):
        parse_prompt("a watercolor of a fox")


def test_parse_prompt_singular_counts_and_unknown_shapes():
    """A singular noun after a number keeps its last letter ("one circle" is exactly one circle, and its canonical
    prompt reads so); a word that is no shape, plural or not, is refused."""
    one = parse_prompt("a photo of one circle")
    assert one["include"] == [{"class": "circle", "count": 1}] and one["exclude"] == [{"class": "circle", "count": 2}]
    assert one["prompt"] == "a photo of one circle" and parse_prompt(one["prompt"]) == one
    assert parse_prompt("a photo of two square")["include"] == [{"class": "square", "count": 2}]
    assert parse_prompt("a photo of two squares") == parse_prompt("a photo of two square")
    for bad in ("a photo of two circless", "a photo of two hexagons", "a photo of three squar"):
        with pytest.raises(ConfigError, match="shapes prompt"):
            parse_prompt(bad)
