"""The patterns world: a second toy world, different in kind, with its own shipped model pair."""

import pytest

import xbt
from xbt.toy import get_world
from xbt.toy import patterns as pw
from xbt.toy.worlds import WORLDS


def test_get_world_names_the_worlds_and_refuses_others():
    assert set(WORLDS) == {"shapes", "patterns", "patterns-wide"}
    assert get_world("patterns").scenes is pw and get_world("patterns-wide").scenes is pw
    with pytest.raises(xbt.XBTError, match="unknown toy world 'moon'"):
        get_world("moon")


def test_scenes_are_deterministic_and_splits_differ():
    assert pw.make_scene("test", 7) == pw.make_scene("test", 7)
    assert pw.make_scene("test", 7) != pw.make_scene("test", 8)
    world = get_world("patterns")
    assert world.text_corpus(50)[:10] == world.text_corpus(10)
    test_caps = {c for cs in world.test_split(50)[1] for c in cs}
    ceiling_caps = {c for cs in world.ceiling_split(50)[1] for c in cs}
    assert len(test_caps & ceiling_caps) < 5  # disjoint scene streams; a short partial caption may repeat


def test_captions_name_the_drawn_items_with_their_counts():
    for i in range(200):
        scene = pw.make_scene("train", i)
        items_caption = pw.captions(scene)[2]  # the items-only template
        for group in scene.groups:
            count_words = pw.COUNT_WORDS[group.count]
            colour_words = pw.COLOUR_WORDS[group.colour]
            kind_words = [w + ("s" if group.count > 1 else "") for w in pw.ITEM_WORDS[group.kind]]
            assert any(
                f"{c} {col} {k}" in items_caption for c in count_words for col in colour_words for k in kind_words
            ), (scene, items_caption)


def test_rendered_regions_carry_their_base_colours():
    for i in range(50):
        scene = pw.make_scene("test", i)
        image = pw.render(scene)
        colours = {c for _, c in image.getcolors(64 * 64)}
        for region in scene.regions:
            assert pw.COLOURS[region.base] in colours
            assert pw.COLOURS[region.ink] in colours
        for group in scene.groups:
            assert pw.COLOURS[group.colour] in colours


def test_every_caption_template_is_used_and_captions_differ_in_grammar_from_shapes():
    world = get_world("patterns")
    corpus = world.text_corpus(500)
    assert sum(";" in c for c in corpus) >= 90  # the listing template
    assert sum(c.startswith("in the ") for c in corpus) >= 90  # the inverted template
    shapes_corpus = set(get_world("shapes").text_corpus(500))
    assert not shapes_corpus & set(corpus)


@pytest.fixture(scope="module")
def patterns_report():
    old, new = get_world("patterns").load_clips()
    return (
        old,
        new,
        xbt.evaluate(old, new, dataset=xbt.toy.load_toy(world="patterns"), verbose=False, query_cost=False),
    )


def test_model_pair_differs_in_library_tower_and_width(patterns_report):
    old, new, _ = patterns_report
    assert old.backend == "transformers" and new.backend == "open_clip"
    assert type(new.model.visual).__name__ == "ModifiedResNet"
    assert (old.embed_dim, new.embed_dim) == (96, 64)
    assert old.source == "xbt-patterns-old"


def test_shipped_weights_reproduce_recorded_recall_and_the_upgrade_is_real(patterns_report):
    _, _, report = patterns_report
    recorded = get_world("patterns").recorded_metrics()
    for row, key in ((report.old_old, "old"), (report.new_new, "new")):
        assert abs(100 * row["i2t"][1] - recorded[key]["i2t_r1"]) <= 1.0, (key, row)
        assert abs(100 * row["t2i"][1] - recorded[key]["t2i_r1"]) <= 1.0, (key, row)
    assert report.dataset == "toy-patterns"
    for direction in ("i2t", "t2i"):
        assert 100 * (report.new_new[direction][1] - report.old_old[direction][1]) >= 10


def test_demo_runs_on_the_patterns_world(tmp_path):
    from xbt.toy.demo import run_demo

    report = run_demo(
        out=tmp_path / "demo",
        n_texts=2000,
        n_pairs=100,
        methods=("procrustes", "xbt-stage1"),
        verbose=False,
        show=False,
        world="patterns",
    )
    assert report.dataset == "toy-patterns"
    assert set(report.methods) == {"procrustes", "xbt-stage1"}
    recorded = get_world("patterns").recorded_metrics()["old"]
    assert abs(100 * report.old_old["i2t"][1] - recorded["i2t_r1"]) <= 1.0
    assert '"world": "patterns"' in (tmp_path / "demo" / "demo_timing.json").read_text()


def test_closure_is_undefined_when_the_target_is_not_above_old_old():
    from xbt.evaluation.report import closure

    assert closure(69.2, 12.0, 30.5) is None  # the patterns ceiling sits below old->old
    assert closure(37.5, 48.7, 64.7) == pytest.approx(11.2 / 27.2)
    assert closure(37.5, 40.0, 37.5) is None


@pytest.fixture(scope="module")
def wide_report():
    world = get_world("patterns-wide")
    old, new = world.load_clips()
    report = xbt.evaluate(
        old, new, dataset=xbt.toy.load_toy(world="patterns-wide"), verbose=False, query_cost=False
    ).set_ceiling(world.ceiling())
    return old, new, report


def test_the_wide_world_has_a_real_clips_scales_and_its_weights_reproduce_their_recall(wide_report):
    old, new, report = wide_report
    assert (old.embed_dim, new.embed_dim) == (512, 768)
    assert old.logit_scale == pytest.approx(100, rel=1e-3) and new.logit_scale == pytest.approx(100, rel=1e-3)
    recorded = get_world("patterns-wide").recorded_metrics()
    for row, key in ((report.old_old, "old"), (report.new_new, "new")):
        assert abs(100 * row["i2t"][1] - recorded[key]["i2t_r1"]) <= 1.0, (key, row)
        assert abs(100 * row["t2i"][1] - recorded[key]["t2i_r1"]) <= 1.0, (key, row)
    assert report.dataset == "toy-patterns-wide"


def test_recorded_ceilings_say_where_the_old_gallery_leaves_room(wide_report):
    _, _, report = wide_report
    # patterns-wide: room in both directions (its OLD text tower is narrow and shallow), at least 3 R@1 points each
    assert report.ceiling["i2t"][1] > report.old_old["i2t"][1] + 0.05
    assert report.ceiling["t2i"][1] > report.old_old["t2i"][1] + 0.03
    shapes, patterns = get_world("shapes").ceiling(), get_world("patterns").ceiling()
    assert shapes["i2t"][1] > 0.375 and shapes["t2i"][1] > 0.191  # above shapes' old->old (37.5 / 19.1) in both
    assert patterns["i2t"][1] < 0.692 and patterns["t2i"][1] < 0.281  # below patterns' old->old in both
