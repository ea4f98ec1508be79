"""The toy world: deterministic, disjoint splits, and captions that describe what was drawn."""

import numpy as np
import pytest

import xbt.toy
from xbt.toy import pair_list, pairs, text_corpus
from xbt.toy import test_split as toy_test_split
from xbt.toy.shapes import COLOURS, SHAPES, caption_mentions, captions, make_scene, render


def test_generator_is_deterministic_per_seed():
    a = [make_scene("test", i) for i in range(50)]
    b = [make_scene("test", i) for i in range(50)]
    assert a == b
    assert all(np.array_equal(np.asarray(render(x)), np.asarray(render(y))) for x, y in zip(a[:10], b[:10]))
    assert [captions(s) for s in a] == [captions(s) for s in b]
    other_seed = [make_scene("test", i, seed=1) for i in range(50)]
    assert other_seed != a


def test_splits_are_stable_prefixes_and_differ_from_each_other():
    assert text_corpus(300)[:100] == text_corpus(100)
    _, test_caps = toy_test_split(20)
    splits = ["test", "pairs", "text", "train"]
    streams = {s: [make_scene(s, i) for i in range(200)] for s in splits}
    # the split streams are independent: index by index they draw different scenes
    for a in splits:
        for b in splits:
            if a < b:
                same = sum(x.objects == y.objects for x, y in zip(streams[a], streams[b]))
                assert same <= 2, (a, b, same)
    assert len(test_caps[0]) == 5 and len(set(test_caps[0])) > 1


def test_captions_name_drawn_attributes():
    for i in range(300):
        scene = make_scene("train", i)
        drawn = {(o.colour, o.shape) for o in scene.objects}
        for caption in captions(scene):
            named = caption_mentions(caption)
            assert named, caption
            assert set(named) <= drawn, (caption, drawn)


def test_rendered_colours_are_on_the_canvas():
    for i in range(100):
        scene = make_scene("test", i)
        pixels = {tuple(p) for p in np.asarray(render(scene)).reshape(-1, 3)}
        for obj in scene.objects:
            assert COLOURS[obj.colour] in pixels, (i, obj)
        assert all(o.shape in SHAPES for o in scene.objects)


def test_five_caption_pairs_repeat_each_image_with_all_its_captions():
    one, five = pair_list(6), pair_list(6, captions_per_image=5)
    assert len(five) == 30
    for i, (image, caption) in enumerate(one):
        rows = five[5 * i : 5 * i + 5]
        assert all(im.tobytes() == image.tobytes() for im, _ in rows)
        assert rows[i % 5][1] == caption and len({c for _, c in rows}) > 1
    with pytest.raises(ValueError, match="captions_per_image"):
        pair_list(6, captions_per_image=3)


def test_pairs_dataset_has_image_and_caption_columns():
    ds = pairs(8)
    assert ds.column_names == ["image", "caption"]
    assert ds[0]["image"].size == (64, 64) and isinstance(ds[0]["caption"], str)


def test_the_text_memory_is_the_corpus_without_a_test_caption():
    world = xbt.toy.get_world("shapes")
    corpus, memory = world.text_corpus(3000), world.text_memory(3000)
    test = {c for caps in world.test_split()[1] for c in caps}
    assert memory == [t for t in corpus if t not in test]
    assert 0 < len(corpus) - len(memory) < len(corpus) // 2  # toy captions do repeat across splits
