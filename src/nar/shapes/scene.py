"""Structured scenes of flat coloured primitives, drawn for the GenEval task families.

A scene is a list of :class:`Primitive` (shape, named colour, centre, half-size, all in
normalised image coordinates) plus the GenEval-style prompt and its evaluation spec. The spec
follows GenEval's metadata (``tag``, ``include``, ``exclude``) with shapes as the object classes,
so :func:`nar.shapes.detect.score` can apply GenEval's rules unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from nar.errors import ConfigError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Saturated, mutually distant colours so that a nearest-colour rule recovers them from noisy
# (generated, decoded) pixels; white is the background and is not an object colour.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "orange": (255, 140, 0),
    "yellow": (245, 220, 0),
    "green": (20, 160, 40),
    "blue": (25, 60, 230),
    "purple": (140, 30, 180),
}
COLORS: tuple[str, ...] = tuple(PALETTE)
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
# The GenEval task families, in GenEval's order and with its tag names.
FAMILIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}
COUNTS: tuple[int, ...] = (2, 3, 4)

# Half-size range as a fraction of the image side (64 px → 6 … 11 px).
MIN_HALF_SIZE = 0.095
MAX_HALF_SIZE = 0.17
# Gap kept between objects' boxes, as a fraction of the side, so same-coloured objects never merge.
GAP = 0.05


@dataclasses.dataclass(frozen=True)
class Primitive:
    """One flat object. ``x``, ``y`` = centre and ``r`` = half-size, as fractions of the image side."""

    shape: str
    color: str
    x: float
    y: float
    r: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ConfigError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in PALETTE:
            raise ConfigError(f"unknown colour {self.color!r}; expected one of {COLORS}")
        if not (0.0 < self.r < 0.5):
            raise ConfigError(f"half-size r must be in (0, 0.5), got {self.r}")

    def box(self) -> tuple[float, float, float, float]:
        """Normalised ``(x0, y0, x1, y1)``."""
        return (self.x - self.r, self.y - self.r, self.x + self.r, self.y + self.r)


@dataclasses.dataclass(frozen=True)
class Scene:
    """Primitives, the prompt that describes them and the GenEval-style spec it is scored by."""

    primitives: tuple[Primitive, ...]
    family: str
    prompt: str
    spec: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "prompt": self.prompt,
            "spec": self.spec,
            "primitives": [dataclasses.asdict(p) for p in self.primitives],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(
            primitives=tuple(Primitive(**p) for p in data["primitives"]),
            family=data["family"],
            prompt=data["prompt"],
            spec=data["spec"],
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Scene:
        return cls.from_dict(json.loads(text))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(shape: str) -> str:
    return shape + "s"


def caption(scene: Scene) -> str:
    """The scene's prompt (GenEval wording: ``a photo of …``)."""
    return prompt_for(scene.spec)


def prompt_for(spec: dict[str, Any]) -> str:
    """The GenEval-style prompt of a spec."""
    tag, inc = spec["tag"], spec["include"]
    if tag == "single_object":
        return f"a photo of {_article(inc[0]['class'])} {inc[0]['class']}"
    if tag == "two_object":
        a, b = inc[0]["class"], inc[1]["class"]
        return f"a photo of {_article(a)} {a} and {_article(b)} {b}"
    if tag == "counting":
        n, shape = inc[0]["count"], inc[0]["class"]
        return f"a photo of {NUMBER_WORDS[n]} {shape if n == 1 else _plural(shape)}"
    if tag == "colors":
        c = inc[0]["color"]
        return f"a photo of {_article(c)} {c} {inc[0]['class']}"
    if tag == "position":
        # include = [reference B, subject A positioned relative to group 0]
        b, a = inc[0]["class"], inc[1]["class"]
        rel = inc[1]["position"][0]
        return f"a photo of {_article(a)} {a} {rel} {_article(b)} {b}"
    if tag == "color_attr":
        (a, ca), (b, cb) = ((o["class"], o["color"]) for o in inc)
        return f"a photo of {_article(ca)} {ca} {a} and {_article(cb)} {cb} {b}"
    raise ConfigError(f"unknown GenEval family {tag!r}; expected one of {FAMILIES}")


def relative_position(box_a: tuple[float, ...], box_b: tuple[float, ...], threshold: float = 0.1) -> set[str]:
    """GenEval's relation of box A to box B (``(x0, y0, x1, y1)``; y grows downwards)."""
    boxes = np.asarray([box_a, box_b], dtype=np.float64).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def _boxes_clear(a: Primitive, b: Primitive) -> bool:
    ax0, ay0, ax1, ay1 = a.box()
    bx0, by0, bx1, by1 = b.box()
    return ax1 + GAP <= bx0 or bx1 + GAP <= ax0 or ay1 + GAP <= by0 or by1 + GAP <= ay0


def _place(rng: np.random.Generator, shapes_colors: list[tuple[str, str]], max_tries: int = 1000) -> list[Primitive]:
    """Non-overlapping placement with rejection sampling."""
    for _ in range(max_tries):
        placed: list[Primitive] = []
        for shape, color in shapes_colors:
            for _ in range(100):
                r = float(rng.uniform(MIN_HALF_SIZE, MAX_HALF_SIZE))
                margin = r + 0.02
                p = Primitive(shape, color, float(rng.uniform(margin, 1 - margin)), float(rng.uniform(margin, 1 - margin)), r)
                if all(_boxes_clear(p, q) for q in placed):
                    placed.append(p)
                    break
            else:
                break
        if len(placed) == len(shapes_colors):
            return placed
    raise RuntimeError(f"could not place {len(shapes_colors)} objects without overlap")


def sample_scene(rng: np.random.Generator, family: str | None = None) -> Scene:
    """Draw one scene of ``family`` (uniform over :data:`FAMILIES` when ``None``).

    The objects are exactly those the prompt names; colours not fixed by the prompt are random.
    """
    if family is None:
        family = FAMILIES[int(rng.integers(len(FAMILIES)))]
    if family not in FAMILIES:
        raise ConfigError(f"unknown GenEval family {family!r}; expected one of {FAMILIES}")

    def shape() -> str:
        return SHAPES[int(rng.integers(len(SHAPES)))]

    def color() -> str:
        return COLORS[int(rng.integers(len(COLORS)))]

    def two_shapes() -> list[str]:
        return [SHAPES[i] for i in rng.choice(len(SHAPES), size=2, replace=False)]

    if family == "single_object":
        s = shape()
        objs, spec = [(s, color())], {"include": [{"class": s, "count": 1}]}
    elif family == "two_object":
        a, b = two_shapes()
        objs, spec = [(a, color()), (b, color())], {"include": [{"class": a, "count": 1}, {"class": b, "count": 1}]}
    elif family == "counting":
        s, n = shape(), int(COUNTS[int(rng.integers(len(COUNTS)))])
        objs = [(s, color()) for _ in range(n)]
        spec = {"include": [{"class": s, "count": n}], "exclude": [{"class": s, "count": n + 1}]}
    elif family == "colors":
        s, c = shape(), color()
        objs, spec = [(s, c)], {"include": [{"class": s, "count": 1, "color": c}]}
    elif family == "color_attr":
        a, b = two_shapes()
        ca, cb = (COLORS[i] for i in rng.choice(len(COLORS), size=2, replace=False))
        objs = [(a, ca), (b, cb)]
        spec = {"include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}]}
    else:  # position: subject A is `rel` reference B
        a, b = two_shapes()
        rel = RELATIONS[int(rng.integers(len(RELATIONS)))]
        objs = [(b, color()), (a, color())]
        spec = {"include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}]}
    spec = {"tag": family, "exclude": [], **spec}

    while True:
        prims = _place(rng, objs)
        # Position prompts: keep only unambiguous layouts (the relation holds, and only it).
        if family != "position" or relative_position(prims[1].box(), prims[0].box()) == {spec["include"][1]["position"][0]}:
            break
    spec["prompt"] = prompt_for(spec)
    return Scene(primitives=tuple(prims), family=family, prompt=spec["prompt"], spec=spec)


_WORD_NUMBERS = {w: n for n, w in NUMBER_WORDS.items()}


def parse_prompt(prompt: str) -> dict[str, Any]:
    """The GenEval spec of a prompt written by :func:`prompt_for` (so samples saved with only their prompt
    can be scored). Raises :class:`ConfigError` for text outside the shapes grammar."""
    text = " ".join(prompt.lower().strip().rstrip(".").split())
    if not text.startswith("a photo of "):
        raise ConfigError(f"not a shapes prompt (expected 'a photo of …'): {prompt!r}")
    words = text[len("a photo of "):].split(" ")

    def obj(tokens: list[str]) -> dict[str, Any]:
        """``[article] [colour] shape``."""
        if tokens and tokens[0] in ("a", "an"):
            tokens = tokens[1:]
        if len(tokens) == 2 and tokens[0] in PALETTE and tokens[1] in SHAPES:
            return {"class": tokens[1], "count": 1, "color": tokens[0]}
        if len(tokens) == 1 and tokens[0] in SHAPES:
            return {"class": tokens[0], "count": 1}
        raise ConfigError(f"cannot parse {' '.join(tokens)!r} in shapes prompt {prompt!r}")

    spec: dict[str, Any]
    # "two circles", and "one circle" / "two square" as people write them: one plural "s" dropped, if any.
    if words[0] in _WORD_NUMBERS and len(words) == 2 and words[1].removesuffix("s") in SHAPES:
        n, shape = _WORD_NUMBERS[words[0]], words[1].removesuffix("s")
        spec = {"tag": "counting", "include": [{"class": shape, "count": n}], "exclude": [{"class": shape, "count": n + 1}]}
    elif "and" in words:
        i = words.index("and")
        a, b = obj(words[:i]), obj(words[i + 1:])
        colored = "color" in a and "color" in b
        if ("color" in a) != ("color" in b):
            raise ConfigError(f"mixed coloured/uncoloured objects in {prompt!r}")
        spec = {"tag": "color_attr" if colored else "two_object", "include": [a, b], "exclude": []}
    else:
        text_rest = " ".join(words)
        for rel in RELATIONS:
            token = f" {rel} "
            if token in text_rest:
                left, right = text_rest.split(token, 1)
                a, b = obj(left.split(" ")), obj(right.split(" "))
                a["position"] = [rel, 0]
                spec = {"tag": "position", "include": [b, a], "exclude": []}
                break
        else:
            single = obj(words)
            spec = {"tag": "colors" if "color" in single else "single_object", "include": [single], "exclude": []}
    spec["prompt"] = prompt_for(spec)
    return spec
