"""The toy world: seeded procedural scenes, drawn as small PIL images and described by captions.

A scene holds one to three objects on a plain background. Each object has a shape, a colour, a
size and a cell of a 3x3 grid; captions name them with several templates and synonyms, as the five
human captions of a Flickr30k/COCO image do (some describe everything, some only part of it).

Every scene is addressed by ``(split, index)`` and drawn from its own ``random.Random`` seeded by
both, so any prefix of a split is stable and the splits never share a scene stream.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

IMAGE_SIZE = 64

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
}
BACKGROUNDS = {"gray": (128, 128, 128), "beige": (200, 185, 150), "teal": (70, 130, 130)}
SIZES = ("small", "large")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")

# Synonyms a caption may use for each attribute value; the first is the canonical word.
SHAPE_WORDS = {
    "circle": ("circle", "disc", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge"),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
    "diamond": ("diamond", "rhombus"),
}
SHAPE_PLURALS = {
    "circle": "circles",
    "disc": "discs",
    "dot": "dots",
    "square": "squares",
    "box": "boxes",
    "block": "blocks",
    "triangle": "triangles",
    "wedge": "wedges",
    "star": "stars",
    "cross": "crosses",
    "plus sign": "plus signs",
    "diamond": "diamonds",
    "rhombus": "rhombi",
}
COLOUR_WORDS = {
    "red": ("red", "crimson"),
    "green": ("green",),
    "blue": ("blue",),
    "yellow": ("yellow",),
    "purple": ("purple", "violet"),
    "orange": ("orange",),
    "black": ("black", "dark"),
    "white": ("white",),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
PICTURE_WORDS = ("picture", "image", "drawing", "photo")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}

SPLIT_SEEDS = {"train": 11, "test": 22, "pairs": 33, "text": 44, "val": 55, "ceiling": 66}


@dataclass(frozen=True)
class ToyObject:
    """One drawn object: canonical attribute values and its grid cell (row, column)."""

    shape: str
    colour: str
    size: str
    row: int
    col: int

    @property
    def position(self) -> str:
        """The cell in words, e.g. 'top left' or 'center'."""
        if self.row == 1 and self.col == 1:
            return "center"
        if self.row == 1:
            return COLUMNS[self.col]
        if self.col == 1:
            return ROWS[self.row]
        return f"{ROWS[self.row]} {COLUMNS[self.col]}"


@dataclass(frozen=True)
class Scene:
    """A background colour and one to three objects in distinct grid cells."""

    background: str
    objects: tuple[ToyObject, ...]
    seed: int


def _scene_rng(split: str, index: int, seed: int) -> random.Random:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown toy split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
    digest = hashlib.sha256(f"{seed}/{SPLIT_SEEDS[split]}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def make_scene(split: str, index: int, seed: int = 0) -> Scene:
    """Draw scene ``index`` of ``split`` deterministically (same arguments, same scene)."""
    rng = _scene_rng(split, index, seed)
    n_objects = rng.choices((1, 2, 3), weights=(0.3, 0.4, 0.3))[0]
    cells = rng.sample([(r, c) for r in range(3) for c in range(3)], n_objects)
    objects = []
    for row, col in cells:
        # Repeating the previous object's look sometimes makes count captions ("two red stars").
        if objects and rng.random() < 0.2:
            prev = objects[-1]
            objects.append(ToyObject(prev.shape, prev.colour, prev.size, row, col))
            continue
        objects.append(ToyObject(rng.choice(SHAPES), rng.choice(tuple(COLOURS)), rng.choice(SIZES), row, col))
    background = rng.choice(tuple(BACKGROUNDS))
    return Scene(background, tuple(objects), seed=rng.getrandbits(31))


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    if shape == "star":
        import math

        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        return pts
    if shape == "cross":
        w = r * 0.38
        return [
            (cx - w, cy - r),
            (cx + w, cy - r),
            (cx + w, cy - w),
            (cx + r, cy - w),
            (cx + r, cy + w),
            (cx + w, cy + w),
            (cx + w, cy + r),
            (cx - w, cy + r),
            (cx - w, cy + w),
            (cx - r, cy + w),
            (cx - r, cy - w),
            (cx - w, cy - w),
        ]
    raise ValueError(shape)


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` as an RGB PIL image of ``size`` x ``size`` pixels (jitter from scene.seed)."""
    rng = random.Random(scene.seed)
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for obj in scene.objects:
        r = cell * (0.22 if obj.size == "small" else 0.42)
        jitter = (cell / 2 - r) * 0.8
        cx = cell * (obj.col + 0.5) + rng.uniform(-jitter, jitter)
        cy = cell * (obj.row + 0.5) + rng.uniform(-jitter, jitter)
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "square":
            s = r * 0.85
            draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
        else:
            draw.polygon(_shape_points(obj.shape, cx, cy, r), fill=fill)
    return img


# ----------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(obj: ToyObject, rng: random.Random, with_size: bool, with_position: bool) -> str:
    words = []
    if with_size:
        words.append(rng.choice(SIZE_WORDS[obj.size]))
    words.append(rng.choice(COLOUR_WORDS[obj.colour]))
    words.append(rng.choice(SHAPE_WORDS[obj.shape]))
    phrase = " ".join(words)
    phrase = f"{_article(phrase)} {phrase}"
    if with_position:
        pos = obj.position
        phrase += " in the center" if pos == "center" else f" at the {pos}"
    return phrase


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _relation(a: ToyObject, b: ToyObject) -> str | None:
    if a.col < b.col:
        return "to the left of"
    if a.col > b.col:
        return "to the right of"
    if a.row < b.row:
        return "above"
    if a.row > b.row:
        return "below"
    return None


def _groups(scene: Scene) -> list[tuple[ToyObject, int]]:
    """Objects grouped by (shape, colour, size), with counts, in first-seen order."""
    seen: dict[tuple[str, str, str], list[ToyObject]] = {}
    for obj in scene.objects:
        seen.setdefault((obj.shape, obj.colour, obj.size), []).append(obj)
    return [(objs[0], len(objs)) for objs in seen.values()]


def _caption_full(scene, rng):
    phrases = [_noun_phrase(o, rng, True, True) for o in scene.objects]
    return f"{_join(phrases)} on a {scene.background} background"


def _caption_relation(scene, rng):
    if len(scene.objects) < 2:
        obj = scene.objects[0]
        picture = rng.choice(PICTURE_WORDS)
        return f"{_article(picture)} {picture} of {_noun_phrase(obj, rng, True, True)}"
    a, b = rng.sample(scene.objects, 2)
    rel = _relation(a, b)
    return f"{_noun_phrase(a, rng, rng.random() < 0.5, False)} {rel} {_noun_phrase(b, rng, rng.random() < 0.5, False)}"


def _caption_count(scene, rng):
    parts = []
    for obj, count in _groups(scene):
        shape_word = rng.choice(SHAPE_WORDS[obj.shape])
        colour_word = rng.choice(COLOUR_WORDS[obj.colour])
        if count > 1:
            parts.append(f"{NUMBER_WORDS[count]} {colour_word} {SHAPE_PLURALS[shape_word]}")
        else:
            parts.append(f"{_article(colour_word)} {colour_word} {shape_word}")
    n = len(scene.objects)
    noun = "shape" if n == 1 else "shapes"
    return f"{NUMBER_WORDS[n]} {noun}: {_join(parts)}"


def _caption_partial(scene, rng):
    obj = rng.choice(scene.objects)
    picture = rng.choice(PICTURE_WORDS)
    lead = rng.choice(("there is", "this shows", f"{_article(picture)} {picture} with"))
    return f"{lead} {_noun_phrase(obj, rng, rng.random() < 0.5, rng.random() < 0.5)}"


def _caption_colours(scene, rng):
    phrases = [_noun_phrase(o, rng, False, False) for o in scene.objects]
    return f"{_join(phrases)} on {scene.background}"


CAPTION_TEMPLATES = (_caption_full, _caption_relation, _caption_count, _caption_partial, _caption_colours)


def captions(scene: Scene, n: int = 5) -> list[str]:
    """``n`` captions of ``scene``, one per template in turn, wording drawn from scene.seed."""
    rng = random.Random(scene.seed ^ 0x5EED)
    return [CAPTION_TEMPLATES[k % len(CAPTION_TEMPLATES)](scene, rng) for k in range(n)]


def caption_mentions(caption: str) -> list[tuple[str, str]]:
    """Canonical (colour, shape) pairs that ``caption`` names, read back from its words.

    Used by the tests to check that captions describe what was drawn.
    """
    colour_of = {w: c for c, ws in COLOUR_WORDS.items() for w in ws}
    shape_of = {w: s for s, ws in SHAPE_WORDS.items() for w in ws}
    shape_of.update({SHAPE_PLURALS[w]: shape_of[w] for w in list(shape_of)})
    words = caption.replace(",", " ").replace(":", " ").split()
    found = []
    i = 0
    while i < len(words):
        if words[i] in colour_of:
            colour = colour_of[words[i]]
            # The shape follows the colour, possibly as the two-word 'plus sign(s)'.
            nxt = words[i + 1] if i + 1 < len(words) else ""
            two = " ".join(words[i + 1 : i + 3])
            if two in shape_of:
                found.append((colour, shape_of[two]))
            elif nxt in shape_of:
                found.append((colour, shape_of[nxt]))
        i += 1
    return found
