"""The adapter's model card meets the Hub's conventions, read back with huggingface_hub's own parser.

A tiny real adapter gets a real evaluation report attached and is saved; its README.md is parsed by
``ModelCard.load`` and its model-index by ``model_index_to_eval_results``: license, library, base model,
pipeline tag, tags, datasets, one task per retrieval direction. The margin sentence is checked on a report
whose verdict is "yes" by a hair, and on an evaluation attached by an older xbt (no noise recorded).
"""

import dataclasses
import json

import numpy as np
import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

import xbt
from xbt import ModelRef
from xbt.adapters.card import LICENSE, PIPELINE_TAG, TASKS, model_card
from xbt.data.retrieval import RetrievalDataset
from xbt.evaluation.evaluate import flip_rates
from xbt.evaluation.report import MethodResult, Report, paired_margin

#: the model-index task type each metric's direction must sit under
DIRECTION_OF_TASK = {"image-to-text-retrieval": "I2T", "text-to-image-retrieval": "T2I"}


@pytest.fixture(scope="module")
def report(old_new, stage1_adapter):
    """A real evaluation of the tiny stage-1 adapter on twelve toy images."""
    images, captions = xbt.toy.test_split(12)
    return xbt.evaluate(
        old_new[0],
        {"xbt": stage1_adapter},
        dataset=RetrievalDataset(images, captions, "toy", "test"),
        cache=False,
        verbose=False,
        query_cost=False,
    )


@pytest.fixture()
def saved_card(stage1_adapter, report, tmp_path):
    """The card ``save_pretrained`` writes for the adapter with the report attached, read back from disk."""
    adapter = xbt.Adapter.from_pretrained(stage1_adapter.save_pretrained(tmp_path / "src"), new=stage1_adapter.new)
    adapter.attach_report(report, "xbt")
    adapter.save_pretrained(tmp_path / "a", repo_id="org/xbt-tiny")
    return ModelCard.load(tmp_path / "a" / "README.md"), adapter


def tiny_margin_report() -> Report:
    """A report whose verdict is "yes" although text->image gains 0.02 R@1 points over 5,000 caption queries,
    while image->text gains 5 points over 1,000 image queries: the noise of each is what the card must say."""
    ks = (1, 5)
    old_old = {"i2t": {1: 0.30, 5: 0.60}, "t2i": {1: 0.1910, 5: 0.45}}
    recall = {"i2t": {1: 0.35, 5: 0.65}, "t2i": {1: 0.1912, 5: 0.46}}
    pfr = {"i2t": {1: 0.08, 5: 0.07}, "t2i": {1: 0.0183, 5: 0.02}}
    nfr = {"i2t": {1: 0.03, 5: 0.02}, "t2i": {1: 0.0181, 5: 0.01}}
    method = MethodResult(
        name="xbt",
        recall=recall,
        compatible={d: {k: recall[d][k] > old_old[d][k] for k in ks} for d in recall},
        pfr=pfr,
        nfr=nfr,
        delta={d: {k: pfr[d][k] - nfr[d][k] for k in ks} for d in pfr},
        gap_closure={d: {k: None for k in ks} for d in pfr},
        info={"method": "xbt"},
    )
    return Report(
        dataset="flickr30k",
        split="test",
        n_images=1000,
        n_captions=5000,
        ks=ks,
        old_model="old",
        new_model="new",
        index="flat",
        old_old=old_old,
        new_new=None,
        methods={"xbt": method},
    )


def test_card_metadata_meets_the_hub_conventions(saved_card):
    card, _ = saved_card
    data = card.data
    assert data.license == LICENSE == "apache-2.0" and data.library_name == "xbt"
    assert data.pipeline_tag == PIPELINE_TAG == "feature-extraction"
    assert {"clip", "open_clip", "backward-compatible", "retrieval", "xbt"} <= set(data.tags)
    assert data.base_model is None  # the tiny models are local: no Hub id is invented
    assert data.datasets is None  # the toy world is no Hub dataset
    assert "(no Hub id)" in card.text and "`tiny-new`" in card.text  # the body names the models it bridges


def test_each_direction_sits_under_its_own_task(saved_card, report):
    card, _ = saved_card
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "org/xbt-tiny" and len(results) == 2 * len(report.ks)
    for r in results:
        assert r.metric_name.endswith(DIRECTION_OF_TASK[r.task_type]), (r.task_type, r.metric_name)
        direction = "i2t" if r.task_type == TASKS["i2t"][0] else "t2i"
        assert r.task_name.startswith(TASKS[direction][1])
        k = int(r.metric_type.removeprefix("recall@"))
        assert r.metric_value == round(100 * report.methods["xbt"].recall[direction][k], 2)
    index = card.data.to_dict()["model-index"][0]["results"]
    assert sorted(entry["task"]["type"] for entry in index) == sorted(DIRECTION_OF_TASK)


def test_card_has_limitations_and_the_citation(saved_card):
    card, _ = saved_card
    text = card.text
    assert "## Limitations" in text and "cannot separate what `tiny-old` does not separate" in text
    assert "needs the old gallery vectors untouched" in text and "measured on one dataset (toy" in text
    assert "## Citation" in text and "arXiv:2405.14715" in text
    assert "Towards Cross-modal Backward-compatible Representation Learning for Vision-Language Models" in text
    assert "Jang, Young Kyun and Lim, Ser-nam" in text


def test_base_model_and_dataset_ids_where_the_hub_has_them(stage1_adapter):
    config = dataclasses.replace(
        stage1_adapter.config(),
        new_model=ModelRef("hf:openai/clip-vit-large-patch14", backend="transformers", embed_dim=48),
        old_model=ModelRef("hf:openai/clip-vit-base-patch32", backend="transformers", embed_dim=32),
        evaluation=tiny_margin_report().summary("xbt"),
    )
    card = ModelCard(str(model_card(config, "org/x", license="mit")))
    assert card.data.base_model == "openai/clip-vit-large-patch14" and card.data.license == "mit"
    assert card.data.datasets == ["clip-benchmark/wds_flickr30k"]  # the repo xbt reads Flickr30k from
    assert {r.dataset_type for r in card.data.eval_results} == {"clip-benchmark/wds_flickr30k"}
    assert "open_clip" not in card.data.tags  # both models are transformers'
    assert "`openai/clip-vit-large-patch14` (new, queries) to `openai/clip-vit-base-patch32` (old" in card.text


def test_a_win_by_a_hair_is_reported_with_its_noise(stage1_adapter):
    report = tiny_margin_report()
    assert report.backward_compatible == {"xbt": True}  # the verdict stays what the evaluation decided
    d, se = report.margin("xbt", "t2i", 1)
    assert (round(100 * d, 2), round(100 * se, 2)) == (0.02, 0.27)
    config = dataclasses.replace(stage1_adapter.config(), evaluation=report.summary("xbt"))
    text = model_card(config).text
    assert (
        "**yes** — but by +0.02 R@1 points in text→image, within the noise (±0.27 at one standard error over "
        "5,000 queries)." in text
    )
    assert "- text→image: +0.02 (±0.27 over 5,000 caption queries, within the noise)" in text
    assert "- image→text: +5.00 (±1.04 over 1,000 image queries, 4.8 standard errors)" in text


def test_a_clear_win_says_by_how_much(stage1_adapter):
    report = tiny_margin_report()
    # text->image now wins by 2 points, with few flips back
    report.methods["xbt"].pfr["t2i"][1], report.methods["xbt"].nfr["t2i"][1] = 0.03, 0.01
    config = dataclasses.replace(stage1_adapter.config(), evaluation=report.summary("xbt"))
    text = model_card(config).text
    assert (
        "**yes**, by at least +2.00 R@1 points (text→image; ±0.28 at one standard error over 5,000 queries)." in text
    )
    assert "within the noise (" not in text


def test_the_standard_error_is_that_of_the_paired_per_query_differences():
    rng = np.random.default_rng(0)
    base, new = rng.random(5000) < 0.19, rng.random(5000) < 0.2
    flips = flip_rates(base, new)
    d, se = paired_margin(flips["pfr"], flips["nfr"], 5000)
    per_query = new.astype(float) - base.astype(float)
    assert d == pytest.approx(per_query.mean()) == pytest.approx(flips["delta"])
    assert se == pytest.approx(per_query.std() / np.sqrt(5000))
    assert paired_margin(0.0, 0.0, 10) == (0.0, 0.0)


def test_an_evaluation_attached_by_an_older_xbt_still_makes_a_card(saved_card, tmp_path):
    _, adapter = saved_card
    folder = tmp_path / "a"
    path = folder / "xbt_config.json"
    config = json.loads(path.read_text())
    del config["evaluation"]["margin"]  # what an older xbt's Report.summary recorded
    path.write_text(json.dumps(config))
    (folder / "README.md").write_text("---\nlibrary_name: xbt\n---\n\n# a card from an older xbt\n")
    loaded = xbt.load_adapter(folder, new=adapter.new)  # loading never reads the card
    text = loaded.model_card().text
    assert "**yes**" in text or "**no**" in text
    assert "noise not recorded (attach the report again)" in text
    loaded.save_pretrained(folder)  # the same adapter: its card is rewritten in the new form
    assert ModelCard.load(folder / "README.md").data.license == LICENSE
