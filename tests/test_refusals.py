"""Refusals from the user trial: each bad input is refused at once, in one line that names the fix, before any work.

Galleries rebuilt over a backfill, rollback and cutover of folders that are not galleries, degenerate OLD
pair vectors given to ``xbt.fit``, ``xbt app`` / ``demo`` / ``push`` typos, and damaged gallery files.
"""

import importlib
import json

import numpy as np
import pytest
import torch

import xbt
from xbt import XBTError
from xbt.cli import main
from xbt.gallery import backfill as bf
from xbt.gallery.mixed import MixedGallery
from xbt.toy import pair_list

from .conftest import one_error_line

fit_module = importlib.import_module("xbt.method.fit")  # the module, not the function xbt.fit


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The toy CLIPs, a stage-1 adapter folder for them, two caption files and a pair set."""
    root = tmp_path_factory.mktemp("refusals")
    old, new = xbt.toy.load_clips(device="cpu")
    adapter = xbt.fit(old, new, xbt.toy.text_corpus(400), epochs=1, verbose=False)
    _, caps = xbt.toy.test_split(40)
    (root / "captions.txt").write_text("\n".join(c[0] for c in caps[:24]) + "\n")
    (root / "other.txt").write_text("\n".join(c[1] for c in caps[24:40]) + "\n")
    xbt.toy.pairs(8, captions_per_image=5).save_to_disk(str(root / "pairs"))
    return {"old": old, "new": new, "adapter": str(adapter.save_pretrained(root / "adapter")), "root": root}


def build(toy, gallery, texts="captions.txt", *extra):
    base = ["--gallery", str(gallery), "--adapter", toy["adapter"], "--quiet"]
    return main(["gallery", "build", *base, "--old", "xbt-toy-old", "--texts", str(toy["root"] / texts), *extra])


def backfill(toy, gallery, budget):
    base = ["--gallery", str(gallery), "--adapter", toy["adapter"], "--quiet"]
    return main(["gallery", "backfill", *base, "--budget", budget, "--batch-size", "4"])


# ---------------------------------------------------------------------- 1. a rebuild over a started backfill


def test_a_rebuild_over_a_started_backfill_is_refused_unless_items_and_models_are_the_same(toy, tmp_path, capsys):
    gallery = tmp_path / "g"
    assert build(toy, gallery, "captions.txt", "--pairs", str(toy["root"] / "pairs")) == 0
    assert backfill(toy, gallery, "8") == 0
    capsys.readouterr()
    recorded = json.loads((gallery / "gallery.json").read_text())
    assert recorded["calibration"]["source"].startswith("fitted")

    assert build(toy, gallery, "other.txt") == 2  # other items: the 8 new vectors would sit on the wrong items
    err = one_error_line(capsys, "gallery")
    assert "backfill in progress" in err and "xbt gallery rollback" in err and "new folder" in err
    assert json.loads((gallery / "gallery.json").read_text()) == recorded  # nothing written

    assert build(toy, gallery, "captions.txt") == 0  # the same items and models: the backfill and calibration kept
    assert "kept the calibration" in capsys.readouterr().out
    g = bf.open_gallery(gallery)
    assert g.in_new.sum() == 8 and g.calibration.to_dict() == recorded["calibration"]

    lines = (toy["root"] / "captions.txt").read_text().splitlines()
    edited = tmp_path / "captions.txt"  # same items by count, other content
    edited.write_text("\n".join(lines[1:] + lines[:1]) + "\n")
    meta = json.loads((gallery / "gallery.json").read_text())
    meta["items"]["file"] = str(edited.resolve())  # as if the recorded file had been edited in place
    (gallery / "gallery.json").write_text(json.dumps(meta))
    assert main(["gallery", "build", "--gallery", str(gallery), "--adapter", toy["adapter"], "--quiet",
                 "--old", "xbt-toy-old", "--texts", str(edited)]) == 2  # fmt: skip
    assert "old vectors differ" in one_error_line(capsys, "gallery")

    assert main(["gallery", "rollback", "--gallery", str(gallery)]) == 0  # the fix the message names
    assert build(toy, gallery, "other.txt") == 0
    assert bf.open_gallery(gallery).size == 16


# ---------------------------------------------------------------------- 2. rollback / cutover


@pytest.mark.parametrize("action", ["rollback", "cutover"])
def test_rollback_and_cutover_of_a_missing_folder_fail_in_one_line(action, tmp_path, capsys):
    assert main(["gallery", action, "--gallery", str(tmp_path / "nope")]) == 2
    err = one_error_line(capsys, "gallery")
    assert "no gallery folder" in err and "nope" in err


def test_rollback_and_cutover_say_when_there_was_nothing_to_do(toy, tmp_path, capsys):
    gallery = tmp_path / "g"
    assert build(toy, gallery) == 0
    capsys.readouterr()
    assert main(["gallery", "rollback", "--gallery", str(gallery)]) == 0
    out = capsys.readouterr().out
    assert "no backfill to roll back" in out and "nothing was done" in out and "done for" not in out
    assert main(["gallery", "cutover", "--gallery", str(gallery)]) == 2
    assert "finish the backfill" in one_error_line(capsys, "gallery")
    assert backfill(toy, gallery, "1.0") == 0
    assert main(["gallery", "cutover", "--gallery", str(gallery)]) == 0
    assert "new vectors only" in capsys.readouterr().out
    assert main(["gallery", "cutover", "--gallery", str(gallery)]) == 0
    assert "already cut over; nothing was done" in capsys.readouterr().out


# ---------------------------------------------------------------------- 3. the OLD pair vectors given to fit


@pytest.fixture()
def no_work(monkeypatch):
    """Fail the test if fit starts stage 1: the refusal must come before any work."""

    def started(*args, **kwargs):
        raise AssertionError("fit started stage 1 before refusing its inputs")

    monkeypatch.setattr(fit_module, "_text_step", started)


def _ov(n=8, d=32, seed=0):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize(
    "given, match",
    [
        (torch.zeros(8, 32).int(), "holds int32 values"),
        (np.zeros((8, 32), np.int64), "holds int64 values"),
        (torch.zeros(8, 32, dtype=torch.bool), "holds bool values"),
        (torch.zeros(8, 32), "8 of 8 vectors are all zeros"),
        (torch.cat([_ov(7), torch.zeros(1, 32)]), r"1 of 8 vectors are all zeros \(first rows \[7\]\)"),
        (torch.ones(8, 32), "all 8 vectors point the same way"),
        (_ov(1).repeat(8, 1) * torch.arange(1.0, 9.0)[:, None], "point the same way"),
        (torch.where(torch.arange(32) == 3, float("nan"), _ov()), "contain NaN or inf"),
        (torch.full((8, 32), float("inf")), "contain NaN or inf"),
        ("x.npy", r"is a path .*load it first.*numpy\.load"),
        (_ov(8, 16), r"must be \[n, 32\]"),
    ],
)
def test_degenerate_old_pair_vectors_are_refused_before_any_work(old_new, captions_400, no_work, given, match):
    with pytest.raises(XBTError, match=match):
        xbt.fit(*old_new, captions_400[:40], pairs=pair_list(8), old_image_embeddings=given, verbose=False)
    with pytest.raises(XBTError, match="old_caption_embeddings"):
        xbt.fit(*old_new, captions_400[:40], pairs=pair_list(8), old_caption_embeddings=given, verbose=False)


def test_real_old_pair_vectors_still_pass_the_checks(old_new, captions_400):
    from xbt.core.checks import check_vectors

    v = _ov().double().numpy()
    out = check_vectors(v, "old_image_embeddings", 32)
    assert out.dtype == torch.float32 and out.shape == (8, 32)
    assert check_vectors(torch.from_numpy(v).half(), "v").dtype == torch.float32


# ---------------------------------------------------------------------- 4. app, demo, push typos


@pytest.fixture()
def no_models(monkeypatch):
    import xbt.cli.app as app_cli

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(app_cli, "load_model", loaded)


def test_app_checks_its_gallery_and_report_before_loading_a_model(no_models, toy, tmp_path, capsys):
    assert main(["app", "--gallery", str(tmp_path / "nope")]) == 2
    assert "not a gallery folder" in one_error_line(capsys, "app")
    assert main(["app", "--report", str(tmp_path / "nope.json")]) == 2
    assert "does not exist" in one_error_line(capsys, "app")
    (tmp_path / "bad.json").write_text('{"dataset": ')
    assert main(["app", "--report", str(tmp_path / "bad.json")]) == 2
    assert "not a report written by xbt eval" in one_error_line(capsys, "app")
    assert build(toy, tmp_path / "mixed") == 0
    capsys.readouterr()
    assert main(["app", "--gallery", str(tmp_path / "mixed")]) == 2
    assert "xbt gallery search" in one_error_line(capsys, "app")
    assert main(["app", "--k", "0"]) == 2
    assert "--k must be >= 1" in one_error_line(capsys, "app")


@pytest.mark.parametrize(
    "flags, match", [(["--pairs", "-5"], "--pairs must be between 4"), (["--texts", "0"], "--texts")]
)
def test_demo_refuses_bad_counts_at_once(monkeypatch, capsys, flags, match):
    import xbt.cli.demo as demo_cli

    monkeypatch.setattr(demo_cli, "run_demo", lambda **kw: pytest.fail("the demo started"))
    assert main(["demo", *flags]) == 2
    assert match in one_error_line(capsys, "demo")


@pytest.mark.parametrize("repo", ["not a repo", "a/b/c", "justaname", "org/bad..name"])
def test_push_refuses_a_bad_repo_id_in_one_line_before_any_network_call(monkeypatch, tmp_path, capsys, repo):
    import xbt.cli.share as push_cli

    monkeypatch.setattr(push_cli, "push_folder", lambda *a, **kw: pytest.fail("push_folder was called"))
    assert main(["push", "--adapter", str(tmp_path), "--repo", repo]) == 2
    err = one_error_line(capsys, "push")
    assert "is not a Hub repo id" in err and "namespace/name" in err


# ---------------------------------------------------------------------- 5. damaged gallery files


@pytest.fixture()
def backfilled(toy, tmp_path):
    """A caption gallery folder with 8 of its 24 items backfilled."""
    gallery = tmp_path / "g"
    assert build(toy, gallery) == 0
    assert backfill(toy, gallery, "8") == 0
    return gallery


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_manifest_names_the_file_and_rollback(toy, backfilled, capsys):
    manifest = backfilled / "backfill" / "manifest.json"
    _truncate(manifest)
    for call in (bf.read_manifest, bf.open_gallery):
        with pytest.raises(XBTError, match=r"manifest\.json is unreadable.*xbt gallery rollback"):
            call(backfilled)
    capsys.readouterr()
    search = ["gallery", "search", "--gallery", str(backfilled), "--adapter", toy["adapter"], "--query-image", "x"]
    assert main(search) == 2
    assert "manifest.json is unreadable" in one_error_line(capsys, "gallery")
    assert main(["gallery", "rollback", "--gallery", str(backfilled)]) == 0  # the named fix works
    assert not bf.open_gallery(backfilled).in_new.any()


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
def test_a_truncated_old_safetensors_names_the_file_and_the_rebuild(toy, backfilled, capsys, keep):
    _truncate(backfilled / "old.safetensors", keep)
    for call in (MixedGallery.load, bf.open_gallery):
        with pytest.raises(XBTError, match=r"old\.safetensors is unreadable.*build the gallery again"):
            call(backfilled)
    capsys.readouterr()
    assert build(toy, backfilled) == 0  # the named fix: the same items and models, the backfill kept
    assert bf.open_gallery(backfilled).in_new.sum() == 8


def test_a_missing_old_safetensors_or_a_truncated_gallery_json_is_named(backfilled):
    (backfilled / "old.safetensors").unlink()
    with pytest.raises(XBTError, match=r"old\.safetensors is missing.*build the gallery again"):
        bf.open_gallery(backfilled)
    _truncate(backfilled / "gallery.json")
    with pytest.raises(XBTError, match=r"gallery\.json is unreadable.*rollback"):
        MixedGallery.load(backfilled)
    assert bf.rollback(backfilled) is not None  # the named fix works on the damaged folder
    assert bf.read_manifest(backfilled) is None
