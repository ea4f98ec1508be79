"""The upgrade advisor (texts alone) and the verdict on held-out pairs that a gallery goes by."""

import json

import pytest
import torch

import xbt
from xbt.adapters.verdict import Verdict, old_part_queries, verdicts
from xbt.advisor.advice import RECOMMENDATIONS, DirectionAdvice, read_calibration, recommend
from xbt.advisor.signals import MIN_TEXTS, SIGNALS, text_signals
from xbt.models.embedding import embed_texts
from xbt.toy import models


@pytest.fixture(scope="module")
def texts():
    return list(dict.fromkeys(xbt.toy.text_corpus(3000)))


@pytest.fixture(scope="module")
def toy_vectors(texts):
    old, new = xbt.toy.load_clips(device="cpu")
    narrow = models.load_model("xbt-toy-new+rank4")
    return {m.name: embed_texts(m, texts, verbose=False) for m in (old, new, narrow)}


def test_a_model_carries_its_own_space_and_a_narrowed_one_does_not(toy_vectors):
    old = toy_vectors["xbt-toy-old"]
    same = text_signals(old, old)
    assert set(same) == set(SIGNALS)
    assert same["separation"] > 0.99 and same["fidelity@1"] > 0.95 and same["agreement@10"] == pytest.approx(1.0)
    shipped = text_signals(old, toy_vectors["xbt-toy-new"])
    narrow = text_signals(old, toy_vectors["xbt-toy-new+rank4"])
    # four dimensions cannot tell apart what the old space separates: the map finds fewer texts' own vectors
    assert narrow["separation"] < shipped["separation"] and narrow["fidelity@10"] < shipped["fidelity@10"] - 0.2
    assert narrow["agreement@10"] < shipped["agreement@10"]


def test_signals_refuse_too_few_texts_and_mismatched_rows(toy_vectors):
    old, new = toy_vectors["xbt-toy-old"], toy_vectors["xbt-toy-new"]
    with pytest.raises(xbt.XBTError, match=f"at least {MIN_TEXTS} distinct texts"):
        text_signals(old[:100], new[:100])
    with pytest.raises(xbt.XBTError, match="same n"):
        text_signals(old, new[:-1])


def test_model_variants_are_seeded_new_models_with_their_own_fingerprint():
    a, b = models.load_model("xbt-toy-new+noise0.3"), models.load_model("xbt-toy-new+noise0.3")
    shipped = models.load_model("xbt-toy-new")
    assert a.fingerprint == b.fingerprint != shipped.fingerprint
    assert a.name == "xbt-toy-new+noise0.3"
    with pytest.raises(xbt.XBTError, match="unknown model variant"):
        models.load_model("xbt-toy-new+blur3")


def test_advise_predicts_per_direction_from_the_shipped_calibration(texts):
    old, new = xbt.toy.load_clips(device="cpu")
    advice = xbt.advise(old, new, texts + texts[:50], verbose=False)  # duplicates dropped
    cal = read_calibration()
    assert advice.n_texts == len(texts) and set(advice.directions) == {"i2t", "t2i"}
    for d, a in advice.directions.items():
        rule = cal["directions"][d]
        assert a.predicted_change == pytest.approx(
            rule["slope"] * (advice.signals[rule["feature"]] - rule["threshold"]), abs=0.01
        )
        assert a.error == pytest.approx(rule["error"], abs=0.01)
        assert (a.verdict == "backward compatible") == (advice.signals[rule["feature"]] > rule["threshold"])
    assert advice.recommendation in RECOMMENDATIONS
    summary = advice.summary()
    assert "image->text" in summary and "recommendation" in summary
    json.dumps(advice.to_dict())


def test_the_recommendation_follows_the_ranges():
    up, across, down = (DirectionAdvice("i2t", c, 1.0) for c in (3.0, 0.5, -3.0))
    assert recommend({"i2t": up, "t2i": DirectionAdvice("t2i", 2.0, 1.0)})[0] == "adapter alone"
    assert recommend({"i2t": up, "t2i": DirectionAdvice("t2i", 0.5, 1.0)})[0] == "adapter plus partial backfill"
    rec, why = recommend({"i2t": down, "t2i": DirectionAdvice("t2i", 2.0, 1.0)})
    assert rec == "keep old queries until a backfill" and "image->text" in why
    assert across.verdict == "backward compatible" and down.verdict == "not backward compatible"


def test_the_verdict_reads_the_guard_record_and_decides_the_old_part(recwarn):
    record = {
        "metrics": {
            "stage2": {
                "versus_old_model": {
                    "text": {"verdict": "worse", "mean_log_rank_gain": -0.4, "standard_error": 0.1, "n": 200},
                    "image": {"verdict": "better", "mean_log_rank_gain": 0.3, "standard_error": 0.1, "n": 200},
                }
            }
        }
    }
    v = verdicts(record)
    assert v["text"].verdict == "not backward compatible" and v["text"].interval == pytest.approx((-0.5, -0.3))
    assert v["image"].compatible and "200 held-out pairs" in v["image"].sentence()
    assert verdicts({})["text"] == Verdict("text", "not measured")
    assert old_part_queries(record, "text")[0] == "old model"
    assert old_part_queries(record, "image")[0] == "adapter"
    assert old_part_queries({}, "text")[0] == "adapter"
    assert old_part_queries(record, "image", force="old model")[0] == "old model"
    with pytest.warns(UserWarning, match="not backward compatible"):
        assert old_part_queries(record, "text", force="adapter")[0] == "adapter"
    with pytest.raises(xbt.XBTError, match="old-part queries are one of"):
        old_part_queries(record, "text", force="old")
    # a verdict measured on the gallery's own pairs decides instead, and the reason says what the fit's said
    own = Verdict("text", "backward compatible", 0.2, 0.05, 300, on="queries of the gallery's pairs")
    path, reason = old_part_queries(record, "text", verdict=own)
    assert (
        path == "adapter" and "gallery's pairs; on its fit's held-out pairs: not backward compatible, -0.400" in reason
    )
    with pytest.raises(xbt.XBTError, match="cannot decide what image queries search"):
        old_part_queries(record, "image", verdict=own)


def test_xbt_advise_cli(tmp_path, texts, capsys):
    from xbt.cli import main

    from .conftest import one_error_line

    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(texts) + "\n")
    out = tmp_path / "advice.json"
    args = ["advise", "--old", "xbt-toy-old", "--new", "xbt-toy-new+noise0.3", "--texts", str(captions), "--quiet"]
    assert main([*args, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "text->image:" in printed and "recommendation:" in printed
    assert json.loads(out.read_text())["n_texts"] == len(texts)
    assert main(["advise", "--old", "xbt-toy-old", "--new", "xbt-toy-new", "--texts", str(tmp_path / "no.txt")]) == 2
    assert "does not exist" in one_error_line(capsys, "advise")


def test_model_surgery_keeps_the_embedding_width():
    narrow = models.load_model("xbt-patterns-new+rank8")  # a ModifiedResNet: its attention pool's projection
    assert narrow.embed_dim == 64
    out = narrow.encode_text(["two red dots"])
    assert out.shape == (1, 64) and torch.allclose(out.norm(dim=1), torch.ones(1))
