"""The patterns world: textured regions with counted items, described in a second caption grammar.

A second world, different in kind from the shapes world (``world.py``), so defaults are chosen on
two and checked for carrying over. The canvas is split into two regions (left/right halves,
top/bottom halves, or a frame around a middle panel); each region is plain or carries a pattern
(stripes, checks, dots) in a second colour; one or two groups of one to four items (rings, bars,
zigzags, arrows) sit in one region. Captions are written in another grammar: region-first
listings, inverted word order, counts as words ("a pair of", "a trio of"), colour and pattern
synonyms, and partial captions that name only the pattern or only the items.

Scenes are addressed by ``(split, index)`` and drawn from their own seeded ``random.Random``, as
in the shapes world, so any prefix of a split is stable and splits never share a scene stream.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

IMAGE_SIZE = 64

COLOURS = {
    "red": (210, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 210),
    "yellow": (235, 215, 50),
    "purple": (130, 50, 170),
    "orange": (245, 140, 30),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "pink": (240, 140, 180),
    "cyan": (60, 200, 210),
}
COLOUR_WORDS = {
    "red": ("red", "scarlet"),
    "green": ("green", "emerald"),
    "blue": ("blue", "navy"),
    "yellow": ("yellow", "golden"),
    "purple": ("purple", "violet"),
    "orange": ("orange", "amber"),
    "black": ("black", "dark"),
    "white": ("white", "pale"),
    "pink": ("pink", "rose"),
    "cyan": ("cyan", "turquoise"),
}
PATTERNS = ("plain", "hstripes", "vstripes", "checks", "dots")
PATTERN_WORDS = {
    "hstripes": ("horizontal stripes", "horizontal lines", "level bands"),
    "vstripes": ("vertical stripes", "vertical lines", "upright bands"),
    "checks": ("checks", "checkerboard", "chequered squares"),
    "dots": ("dots", "spots", "polka dots"),
}
PLAIN_WORDS = ("plain", "solid", "flat")
LAYOUTS = {
    # layout -> the two region names, each with its synonyms
    "vertical": (("left half", "left side"), ("right half", "right side")),
    "horizontal": (("top half", "upper part"), ("bottom half", "lower part")),
    "frame": (("border", "frame"), ("middle", "central panel")),
}
ITEMS = ("ring", "bar", "zigzag", "arrow")
ITEM_WORDS = {
    "ring": ("ring", "loop", "hoop"),
    "bar": ("bar", "stick", "rod"),
    "zigzag": ("zigzag", "squiggle"),
    "arrow": ("arrow", "pointer"),
}
COUNT_WORDS = {1: ("one", "a single"), 2: ("two", "a pair of"), 3: ("three", "a trio of"), 4: ("four", "four")}

SPLIT_SEEDS = {"train": 101, "test": 202, "pairs": 303, "text": 404, "val": 505, "ceiling": 606}


@dataclass(frozen=True)
class Region:
    """One region's look: its base colour, and a pattern drawn in ``ink`` unless it is plain."""

    base: str
    pattern: str
    ink: str


@dataclass(frozen=True)
class ItemGroup:
    """``count`` items of one kind and colour, all in region ``region`` (0 or 1)."""

    kind: str
    colour: str
    count: int
    region: int


@dataclass(frozen=True)
class PatternScene:
    """A layout, its two regions, one or two item groups, and a seed for drawing jitter and wording."""

    layout: str
    regions: tuple[Region, Region]
    groups: tuple[ItemGroup, ...]
    seed: int


def _rng(split: str, index: int, seed: int) -> random.Random:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown patterns split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
    digest = hashlib.sha256(f"patterns/{seed}/{SPLIT_SEEDS[split]}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _region(rng: random.Random, avoid: str | None) -> Region:
    base = rng.choice([c for c in COLOURS if c != avoid])
    pattern = rng.choice(PATTERNS)
    ink = rng.choice([c for c in COLOURS if c != base]) if pattern != "plain" else base
    return Region(base, pattern, ink)


def make_scene(split: str, index: int, seed: int = 0) -> PatternScene:
    """Draw scene ``index`` of ``split`` deterministically (same arguments, same scene)."""
    rng = _rng(split, index, seed)
    layout = rng.choice(tuple(LAYOUTS))
    first = _region(rng, None)
    regions = (first, _region(rng, first.base))
    n_groups = rng.choices((1, 2), weights=(0.6, 0.4))[0]
    groups: list[ItemGroup] = []
    for _ in range(n_groups):
        kind = rng.choice([k for k in ITEMS if k not in {g.kind for g in groups}])
        region = rng.randrange(2)
        colour = rng.choice([c for c in COLOURS if c not in (regions[region].base, regions[region].ink)])
        groups.append(ItemGroup(kind, colour, rng.choice((1, 2, 3, 4)), region))
    return PatternScene(layout, regions, tuple(groups), seed=rng.getrandbits(31))


# ----------------------------------------------------------------------------- drawing


def _boxes(layout: str, size: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """The (x0, y0, x1, y1) boxes of the two regions; for a frame, region 0 is the whole canvas."""
    h = size // 2
    if layout == "vertical":
        return (0, 0, h, size), (h, 0, size, size)
    if layout == "horizontal":
        return (0, 0, size, h), (0, h, size, size)
    m = size // 4
    return (0, 0, size, size), (m, m, size - m, size - m)


def _fill(draw: ImageDraw.ImageDraw, box, region: Region) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=COLOURS[region.base])
    ink, step = COLOURS[region.ink], 6
    if region.pattern == "hstripes":
        for y in range(y0, y1, step):
            draw.rectangle((x0, y, x1 - 1, min(y + 2, y1 - 1)), fill=ink)
    elif region.pattern == "vstripes":
        for x in range(x0, x1, step):
            draw.rectangle((x, y0, min(x + 2, x1 - 1), y1 - 1), fill=ink)
    elif region.pattern == "checks":
        for y in range(y0, y1, 4):
            for x in range(x0 + (4 if (y - y0) // 4 % 2 else 0), x1, 8):
                draw.rectangle((x, y, min(x + 3, x1 - 1), min(y + 3, y1 - 1)), fill=ink)
    elif region.pattern == "dots":
        for y in range(y0 + 2, y1 - 1, step):
            for x in range(x0 + 2, x1 - 1, step):
                draw.ellipse((x - 1, y - 1, x + 1, y + 1), fill=ink)


def _item(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, colour) -> None:
    if kind == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=2)
    elif kind == "bar":
        draw.rectangle((cx - r * 0.35, cy - r, cx + r * 0.35, cy + r), fill=colour)
    elif kind == "zigzag":
        pts = [(cx - r + k * r / 2, cy + (r * 0.6 if k % 2 else -r * 0.6)) for k in range(5)]
        draw.line(pts, fill=colour, width=2)
    else:  # arrow, pointing right
        draw.rectangle((cx - r, cy - r * 0.2, cx + r * 0.2, cy + r * 0.2), fill=colour)
        draw.polygon([(cx + r * 0.1, cy - r * 0.7), (cx + r, cy), (cx + r * 0.1, cy + r * 0.7)], fill=colour)


def _slots(layout: str, region: int, size: int) -> list[tuple[float, float]]:
    """Up to eight item centres inside a region (for a frame's border: along its edges)."""
    if layout == "frame" and region == 0:
        e, q = size / 8, size / 4
        return [
            (e, q),
            (e, 3 * q),
            (size - e, q),
            (size - e, 3 * q),
            (q, e),
            (3 * q, e),
            (q, size - e),
            (3 * q, size - e),
        ]
    x0, y0, x1, y1 = _boxes(layout, size)[region]
    w, h = (x1 - x0) / 4, (y1 - y0) / 2
    if layout == "vertical":
        w, h = (x1 - x0) / 2, (y1 - y0) / 4
        return [(x0 + w * (i + 0.5), y0 + h * (j + 0.5)) for j in range(4) for i in range(2)]
    return [(x0 + w * (i + 0.5), y0 + h * (j + 0.5)) for j in range(2) for i in range(4)]


def render(scene: PatternScene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` as an RGB PIL image of ``size`` x ``size`` pixels (jitter from scene.seed)."""
    rng = random.Random(scene.seed)
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    for box, region in zip(_boxes(scene.layout, size), scene.regions):
        _fill(draw, box, region)
    free = {0: _slots(scene.layout, 0, size), 1: _slots(scene.layout, 1, size)}
    for slots in free.values():
        rng.shuffle(slots)
    r = size / 16
    for group in scene.groups:
        for _ in range(group.count):
            cx, cy = free[group.region].pop()
            _item(draw, group.kind, cx + rng.uniform(-1, 1), cy + rng.uniform(-1, 1), r, COLOURS[group.colour])
    return img


# ----------------------------------------------------------------------------- captions


def _region_name(scene: PatternScene, i: int, rng: random.Random) -> str:
    return rng.choice(LAYOUTS[scene.layout][i])


def _look(region: Region, rng: random.Random) -> str:
    """'navy vertical stripes on golden', or 'plain golden'."""
    base = rng.choice(COLOUR_WORDS[region.base])
    if region.pattern == "plain":
        return f"{rng.choice(PLAIN_WORDS)} {base}"
    return f"{rng.choice(COLOUR_WORDS[region.ink])} {rng.choice(PATTERN_WORDS[region.pattern])} on {base}"


def _items(group: ItemGroup, rng: random.Random) -> str:
    """'a trio of emerald loops', 'one red bar'."""
    noun = rng.choice(ITEM_WORDS[group.kind])
    noun = noun if group.count == 1 else noun + "s"
    return f"{rng.choice(COUNT_WORDS[group.count])} {rng.choice(COLOUR_WORDS[group.colour])} {noun}"


def _caption_listing(scene, rng):
    """Region by region, then the items: 'left half: plain red; right half: ...; two blue rings'."""
    parts = [f"{_region_name(scene, i, rng)}: {_look(scene.regions[i], rng)}" for i in range(2)]
    parts += [f"{_items(g, rng)} in the {_region_name(scene, g.region, rng)}" for g in scene.groups]
    return "; ".join(parts)


def _caption_inverted(scene, rng):
    """Items first, place last: 'in the border sit three amber hoops, and the middle is dots on pink'."""
    g = rng.choice(scene.groups)
    other = 1 - g.region
    return (
        f"in the {_region_name(scene, g.region, rng)} sit {_items(g, rng)}, "
        f"and the {_region_name(scene, other, rng)} is {_look(scene.regions[other], rng)}"
    )


def _caption_items(scene, rng):
    """Only the items: 'a pair of violet arrows with one cyan rod'."""
    return " with ".join(_items(g, rng) for g in scene.groups)


def _caption_patterns(scene, rng):
    """Only the two regions' looks: 'checks on white beside plain red'."""
    joiner = "framed by" if scene.layout == "frame" else rng.choice(("beside", "next to", "and"))
    looks = [_look(r, rng) for r in scene.regions]
    if scene.layout == "frame":
        looks.reverse()  # the middle, framed by the border
    return f"{looks[0]} {joiner} {looks[1]}"


def _caption_mixed(scene, rng):
    """One region and its items in loose order: 'golden spots on navy, upper part, holding four pale bars'."""
    g = rng.choice(scene.groups)
    region = scene.regions[g.region]
    return f"{_look(region, rng)} as the {_region_name(scene, g.region, rng)}, holding {_items(g, rng)}"


CAPTION_TEMPLATES = (_caption_listing, _caption_inverted, _caption_items, _caption_patterns, _caption_mixed)


def captions(scene: PatternScene, n: int = 5) -> list[str]:
    """``n`` captions of ``scene``, one per template in turn, wording drawn from scene.seed."""
    rng = random.Random(scene.seed ^ 0x9A77)
    return [CAPTION_TEMPLATES[k % len(CAPTION_TEMPLATES)](scene, rng) for k in range(n)]
