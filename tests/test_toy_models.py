"""The shipped toy CLIPs: they load offline, reproduce their recorded recall, and form a real upgrade."""

import json

import pytest

import xbt
from xbt.toy import load_clips, recorded_metrics


@pytest.fixture(scope="module")
def toy_report():
    old, new = load_clips()
    return xbt.evaluate(old, new, dataset="toy", verbose=False, query_cost=False)


def test_shipped_weights_reproduce_recorded_recall(toy_report):
    recorded = recorded_metrics()
    for row, key in ((toy_report.old_old, "toy-old"), (toy_report.new_new, "toy-new")):
        assert abs(100 * row["i2t"][1] - recorded[key]["i2t_r1"]) <= 1.0, (key, row)
        assert abs(100 * row["t2i"][1] - recorded[key]["t2i_r1"]) <= 1.0, (key, row)


def test_toy_world_is_hard_and_the_upgrade_is_worth_having(toy_report):
    old_t2i = 100 * toy_report.old_old["t2i"][1]
    assert 15 <= old_t2i <= 60
    for direction in ("i2t", "t2i"):
        assert 100 * (toy_report.new_new[direction][1] - toy_report.old_old[direction][1]) >= 10


def test_toy_models_differ_in_size_and_width():
    old, new = load_clips()
    assert (old.embed_dim, new.embed_dim) == (64, 96)
    n_old = sum(p.numel() for p in old.model.parameters())
    n_new = sum(p.numel() for p in new.model.parameters())
    assert n_new > n_old


def test_demo_runs_end_to_end_and_writes_its_report(tmp_path, capsys):
    from xbt.cli import main

    status = main(["demo", "--texts", "3000", "--pairs", "200", "--out", str(tmp_path / "demo"), "--quiet"])
    assert status == 0
    printed = capsys.readouterr().out
    methods = {"procrustes", "linear", "slerp", "nlerp", "xbt-stage1", "xbt-stage1+2", "xbt-stage1+2+slerp"}
    for row in {"old→old", "new→new"} | methods:
        assert row in printed
    table = printed[printed.index("Recall@K in %") : printed.index("\nembedding ")]
    assert max(len(line) for line in table.splitlines()) <= 100  # the summary, not the 200-column markdown
    assert "embedding " in printed and "full table (flips, gap closure, query cost)" in printed
    timing = json.loads((tmp_path / "demo" / "demo_timing.json").read_text())
    assert timing["embed_seconds"] > 0 and set(timing["fit_seconds"]) == methods
    saved = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert set(saved["methods"]) == methods
    assert saved["methods"]["xbt-stage1+2+slerp"]["requires_old_encoder"]
    assert not saved["methods"]["xbt-stage1+2"]["requires_old_encoder"]
    assert (tmp_path / "demo" / "report.png").stat().st_size > 1000
