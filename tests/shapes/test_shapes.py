"""The shapes domain: ground truth scores 1.0, noise scores ~0, scenes round-trip, prompts follow GenEval."""

from __future__ import annotations

import numpy as np
import pytest

from nar.errors import ConfigError
from nar.shapes import (
    FAMILIES,
    Primitive,
    Scene,
    caption,
    detect,
    evaluate,
    parse_prompt,
    render_scene,
    sample_scene,
    score,
)


@pytest.mark.parametrize("family", FAMILIES)
def test_ground_truth_scores_one(family):
    rng = np.random.default_rng(1)
    for _ in range(60):
        scene = sample_scene(rng, family)
        correct, reason = evaluate(scene.spec, render_scene(scene, size=64))
        assert correct, (scene.prompt, reason)


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
