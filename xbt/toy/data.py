"""The toy world's splits: the CLIP training set, the test gallery, the pair set and the text corpus.

Each split draws from its own seeded scene stream (see ``world.SPLIT_SEEDS``), so they are
disjoint streams and any prefix is stable: ``text_corpus(1000)`` is the start of ``text_corpus(50000)``.
"""

from __future__ import annotations

from collections.abc import Iterator

from PIL import Image

from .world import captions, make_scene, render

TEST_IMAGES = 1000
MAX_PAIRS = 2000
CAPTIONS_PER_IMAGE = 5


def text_corpus(n: int = 50_000, seed: int = 0) -> list[str]:
    """``n`` captions of scenes that are never drawn: the text-only corpus of XBT stage 1.

    Caption ``i`` uses template ``i % 5`` of its own scene, so every template is represented.
    """
    if n < 1:
        raise ValueError(f"text_corpus needs n >= 1, got {n}")
    return [captions(make_scene("text", i, seed))[i % CAPTIONS_PER_IMAGE] for i in range(n)]


def iter_text_corpus(n: int = 50_000, seed: int = 0) -> Iterator[str]:
    """``text_corpus(n)`` as a lazy generator: the same captions in the same order, one at a time (no list)."""
    if n < 1:
        raise ValueError(f"text_corpus needs n >= 1, got {n}")
    for i in range(n):
        yield captions(make_scene("text", i, seed))[i % CAPTIONS_PER_IMAGE]


def pair_list(n: int = MAX_PAIRS, seed: int = 0) -> list[tuple[Image.Image, str]]:
    """``n`` (PIL image, caption) pairs from the pair split, disjoint from the test gallery."""
    if not 1 <= n <= MAX_PAIRS:
        raise ValueError(f"the toy pair set holds 1..{MAX_PAIRS} pairs, asked for {n}")
    out = []
    for i in range(n):
        scene = make_scene("pairs", i, seed)
        out.append((render(scene), captions(scene)[i % CAPTIONS_PER_IMAGE]))
    return out


def pairs(n: int = MAX_PAIRS, seed: int = 0):
    """The pair set as a ``datasets.Dataset`` with an ``image`` (PIL) and a ``caption`` column."""
    import datasets

    items = pair_list(n, seed)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    return datasets.Dataset.from_dict(
        {"image": [im for im, _ in items], "caption": [c for _, c in items]}, features=features
    )


def test_split(n: int = TEST_IMAGES, seed: int = 0) -> tuple[list[Image.Image], list[list[str]]]:
    """The test gallery: ``n`` images and, for image ``i``, its five captions ``captions[i]``."""
    if not 1 <= n <= TEST_IMAGES:
        raise ValueError(f"the toy test split holds 1..{TEST_IMAGES} images, asked for {n}")
    images, caps = [], []
    for i in range(n):
        scene = make_scene("test", i, seed)
        images.append(render(scene))
        caps.append(captions(scene, CAPTIONS_PER_IMAGE))
    return images, caps


def train_split(n: int, seed: int = 0, split: str = "train") -> tuple[list[Image.Image], list[list[str]]]:
    """``n`` images with five captions each from ``split``, for training the toy CLIPs themselves."""
    images, caps = [], []
    for i in range(n):
        scene = make_scene(split, i, seed)
        images.append(render(scene))
        caps.append(captions(scene, CAPTIONS_PER_IMAGE))
    return images, caps
