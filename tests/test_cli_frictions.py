"""Frictions a new user met in the CLI, fixed: search hits that say what they are (and ✓ the right ones), a
description and a help text for everything in ``--help``, and one error line, no traceback, for bad input.

Real behaviour on the shipped toy CLIPs: galleries of toy test images and captions built and searched with
``xbt.cli.main``; the toy test split is cut to 24 images (``test_split`` as the command imported it) to stay quick.
"""

import argparse
import json
import shutil

import pytest
import torch

import xbt
from xbt.adapters.config import ModelRef
from xbt.cli import build_parser, main
from xbt.gallery.mixed import MixedGallery

from .conftest import one_error_line

N_IMAGES = 24


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A stage-1 adapter for the toy CLIPs; 12 toy test images as files, their 60 captions, their own pairs."""
    import datasets

    root = tmp_path_factory.mktemp("frictions")
    old, new = xbt.toy.load_clips(device="cpu")
    adapter = xbt.fit(old, new, xbt.toy.text_corpus(400), epochs=1, verbose=False)
    images, caps = xbt.toy.test_split(12)
    (root / "images").mkdir()
    for i, image in enumerate(images):
        image.save(root / "images" / f"photo_{i:02d}.png")
    (root / "captions.txt").write_text("\n".join(c for cs in caps for c in cs) + "\n")
    rows = [(image, c) for image, cs in zip(images, caps) for c in cs]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    own = datasets.Dataset.from_dict({"image": [r[0] for r in rows], "caption": [r[1] for r in rows]}, features)
    own.save_to_disk(str(root / "own_pairs"))
    xbt.toy.pairs(8, captions_per_image=5).save_to_disk(str(root / "other_pairs"))  # none of the gallery's items
    return {"adapter": str(adapter.save_pretrained(root / "adapter")), "root": root, "images": images, "caps": caps}


@pytest.fixture()
def small_toy_split(monkeypatch):
    """The toy test split of ``--toy`` galleries cut to its first ``N_IMAGES`` images (the same images)."""
    import xbt.cli.common as common_cli
    import xbt.cli.gallery as gallery_cli

    for module in (gallery_cli, common_cli):  # the item source (common) and how a hit reads (gallery)
        monkeypatch.setattr(module, "test_split", lambda: xbt.toy.test_split(N_IMAGES))


def gallery_args(toy, folder, *extra):
    return ["--gallery", str(folder), "--adapter", toy["adapter"], "--quiet", *extra]


def build(toy, folder, *items):
    return main(["gallery", "build", *gallery_args(toy, folder, "--old", "xbt-toy-old", *items)])


def search(toy, folder, *queries):
    return main(["gallery", "search", *gallery_args(toy, folder, "-k", "3", *queries)])


def hit_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line[:5].strip().rstrip(".").isdigit()]


# ---------------------------------------------------------------------- 1. what each hit is, and ✓


def item_of(line: str) -> int:
    return int(line.split("item")[1].split()[0])


def test_a_toy_image_gallery_shows_each_image_by_its_caption_and_marks_the_right_one(
    toy, small_toy_split, tmp_path, capsys
):
    _, caps = xbt.toy.test_split(N_IMAGES)
    assert build(toy, tmp_path / "g", "--toy", "images") == 0
    capsys.readouterr()
    known, unknown = caps[5][0], "a purple elephant on the moon"
    assert search(toy, tmp_path / "g", "--query", known.upper() + ".", "--query", unknown) == 0
    out = capsys.readouterr().out
    assert "✓ marks a right answer the gallery knows, from the toy test split" in out
    first, second = out.split("\nquery: ")[1:]
    assert first.startswith(known.upper()[:60]) and second.startswith(unknown)
    owners = {i for i, cs in enumerate(caps) if known in cs}  # any image with this caption is a right answer
    assert owners == {5} and first.splitlines()[1].startswith("  right answer: item 5, ")
    for line in hit_lines(first):
        assert ("✓" in line) == (item_of(line) in owners), line
    assert "no right answer is known for this query: no ✓ marks" in second and "✓" not in "".join(hit_lines(second))
    for line in hit_lines(first) + hit_lines(second):  # each image shown by its own first caption, quoted
        shown = line.split('"')[1]
        assert len(line) <= 80 and caps[item_of(line)][0].startswith(shown.removesuffix("…")), line


def test_an_image_folder_gallery_with_its_own_pairs_shows_file_names_and_marks_the_right_image(toy, tmp_path, capsys):
    folder = tmp_path / "g"
    assert build(toy, folder, "--images", str(toy["root"] / "images"), "--pairs", str(toy["root"] / "own_pairs")) == 0
    assert "recorded the right answers of 60 --pairs queries" in capsys.readouterr().out
    hits = json.loads((folder / "known_hits.json").read_text())["hits"]
    assert hits[" ".join(toy["caps"][3][1].split())] == [3]
    assert search(toy, folder, "--query", toy["caps"][3][1]) == 0
    out = capsys.readouterr().out
    assert f"items: image files in {toy['root'] / 'images'}" in out and "from --pairs" in out
    lines = hit_lines(out)
    assert len(lines) == 3 and all(line.rstrip().endswith(".png") for line in lines)
    assert "right answer: item 3, rank " in out
    assert all(("✓" in line) == line.endswith("photo_03.png") for line in lines)
    assert any(line.endswith("photo_03.png") for line in lines)  # the query's own image is found

    # a rebuild of other items into the folder drops the right answers that were these items'
    assert build(toy, folder, "--texts", str(toy["root"] / "captions.txt")) == 0
    assert not (folder / "known_hits.json").exists()


def test_a_caption_gallery_shows_captions_cut_to_80_columns_and_marks_an_image_query_s_captions(toy, tmp_path, capsys):
    folder = tmp_path / "g"
    assert (
        build(toy, folder, "--texts", str(toy["root"] / "captions.txt"), "--pairs", str(toy["root"] / "own_pairs"))
        == 0
    )
    capsys.readouterr()
    assert search(toy, folder, "--query-image", str(toy["root"] / "images" / "photo_07.png")) == 0
    out = capsys.readouterr().out
    flat = [c for cs in toy["caps"] for c in cs]
    assert "right answers: 5 items, " in out
    for line in hit_lines(out):
        assert len(line) <= 80, line
        i = item_of(line)
        assert ("✓" in line) == (i // 5 == 7), line
        shown = line.split('"')[1]
        assert flat[i] == shown or (shown.endswith("…") and flat[i].startswith(shown[:-1]))


def test_galleries_without_known_answers_or_item_records_still_search_without_marks(toy, tmp_path, capsys):
    folder = tmp_path / "g"
    assert (
        build(toy, folder, "--texts", str(toy["root"] / "captions.txt"), "--pairs", str(toy["root"] / "other_pairs"))
        == 0
    )
    assert not (folder / "known_hits.json").exists()  # the pair split holds none of the gallery's captions
    capsys.readouterr()
    assert search(toy, folder, "--query-image", str(toy["root"] / "images" / "photo_01.png")) == 0
    out = capsys.readouterr().out
    assert "no ✓ marks: the gallery knows no right answers" in out
    assert "no right answer is known for this query" not in out and "✓" not in "".join(hit_lines(out))

    # a gallery saved without the items' source (as by an earlier xbt, or MixedGallery.save): shown by id
    meta = json.loads((folder / "gallery.json").read_text())
    meta["items"] = {}
    (folder / "gallery.json").write_text(json.dumps(meta))
    assert search(toy, folder, "--query-image", str(toy["root"] / "images" / "photo_01.png")) == 0
    lines = hit_lines(capsys.readouterr().out)
    assert len(lines) == 3 and all(line.split()[-1].isdigit() and "caption" in line for line in lines)

    # a known_hits.json made for other items is ignored, with the reason
    other = tmp_path / "other"
    assert (
        build(toy, other, "--texts", str(toy["root"] / "captions.txt"), "--pairs", str(toy["root"] / "own_pairs")) == 0
    )
    shutil.copy(other / "known_hits.json", folder / "known_hits.json")
    gallery = MixedGallery.load(folder)
    gallery.item_keys = gallery.item_keys[::-1].copy()
    capsys.readouterr()
    from xbt.gallery.folder import read_known_hits

    assert read_known_hits(folder, gallery.item_keys)[0] == {}
    assert "other items" in read_known_hits(folder, gallery.item_keys)[1]


# ---------------------------------------------------------------------- 2. --help says what everything does


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


@pytest.mark.parametrize("command", ["app", "push", "gallery"])
def test_every_parser_of_app_push_and_gallery_has_a_description_and_every_flag_a_help(command):
    top = _subparsers(build_parser())[command]
    parsers = {command: top, **{f"{command} {name}": p for name, p in _subparsers(top).items()}}
    assert command != "gallery" or {"build", "backfill", "search", "rollback", "cutover"} <= set(_subparsers(top))
    for name, parser in parsers.items():
        assert parser.description and len(parser.description.split()) >= 8, name
        for action in parser._actions:
            if action.option_strings:
                assert action.help and action.help.strip(), f"xbt {name} {action.option_strings}"


def test_cutover_help_names_its_flag(capsys):
    with pytest.raises(SystemExit):
        main(["gallery", "cutover", "--help"])
    out = capsys.readouterr().out
    assert "--gallery DIR  the gallery folder" in out and "After a full backfill" in out


# ---------------------------------------------------------------------- 3. bad input: one line, status 2


@pytest.fixture()
def no_models(monkeypatch):
    """Fail the test if a command loads a model: its refusal must come first."""
    import xbt.cli.app as app_cli
    import xbt.cli.gallery as gallery_cli

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    for module in (app_cli, gallery_cli):
        monkeypatch.setattr(module, "load_model", loaded)
    monkeypatch.setattr(gallery_cli, "new_from_adapter_config", loaded)


def test_rollback_and_cutover_refuse_what_is_not_a_gallery_in_migration(no_models, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "page").mkdir()
    (tmp_path / "page" / "gallery.json").write_text('{"kind": "static", "captions": []}')
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "gallery.json").write_text('{"kind": "mixed"}')
    cases = [
        ("nope", "no gallery folder"),
        ("file.txt", "no gallery folder"),
        ("empty", "holds no gallery.json"),
        ("page", "search page's gallery"),
        ("odd", "records no item count"),
    ]
    for action in ("cutover", "rollback"):
        for name, match in cases:
            if action == "rollback" and name == "odd":  # a damaged gallery.json may roll back (part of its fix)
                assert main(["gallery", action, "--gallery", str(tmp_path / name)]) == 0
                assert "nothing was done" in capsys.readouterr().out
                continue
            assert main(["gallery", action, "--gallery", str(tmp_path / name)]) == 2
            assert match in one_error_line(capsys, "gallery"), (action, name)


def test_gallery_inputs_are_refused_before_a_model_is_loaded(no_models, toy, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "blank.txt").write_text("\n \n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    cases = [
        (["build", *gallery_args(toy, tmp_path / "file", "--old", "xbt-toy-old", "--toy", "images")], "is a file"),
        (["build", *gallery_args(toy, tmp_path / "g", "--old", "x", "--texts", str(tmp_path / "no.txt"))], "--texts"),
        (["build", *gallery_args(toy, tmp_path / "g", "--old", "x", "--images", str(tmp_path / "no"))], "--images"),
        (
            ["build", *gallery_args(toy, tmp_path / "g", "--old", "x", "--toy", "images", "--pairs", str(tmp_path))],
            "--pairs",
        ),
        (
            ["build", *gallery_args(toy, tmp_path / "g", "--old", "x", "--toy", "images", "--device", "bogus")],
            "--device",
        ),
        (
            ["build", *gallery_args(toy, tmp_path / "g", "--old", "x", "--texts", str(tmp_path / "blank.txt"))],
            "no captions",
        ),
        (
            ["build", *gallery_args(toy, tmp_path / "g", "--old", "x", "--texts", str(tmp_path / "latin1.txt"))],
            "UTF-8",
        ),
        (["search", *gallery_args(toy, tmp_path / "nope", "--query", "x")], "no gallery folder"),
        (["search", *gallery_args(toy, tmp_path / "g", "--query", "x", "-k", "0")], "-k must be >= 1"),
    ]
    for argv, match in cases:
        assert main(["gallery", *argv]) == 2
        assert match in one_error_line(capsys, "gallery"), argv

    # a caption gallery (built with the models), then queries that cannot be read: refused before the adapter
    folder = tmp_path / "captions"
    gallery = MixedGallery(ModelRef("m", embed_dim=4), 4, "text", items={"kind": "texts"})
    gallery.add_old(torch.eye(4), items=["a red circle", "a blue square", "a star", "a dot"])
    gallery.save(folder)
    for path, match in ((tmp_path / "none.png", "No such file"), (tmp_path / "notes.txt", "cannot identify image")):
        assert main(["gallery", "search", *gallery_args(toy, folder, "--query-image", str(path))]) == 2
        err = one_error_line(capsys, "gallery")
        assert "--query-image" in err and match in err and "give an image file" in err
    for budget, match in (("2.0", "--budget 2.0"), ("-1", "--budget -1"), ("lots", "--budget must be")):
        assert main(["gallery", "backfill", *gallery_args(toy, folder, "--budget", budget)]) == 2
        assert match in one_error_line(capsys, "gallery")
    assert main(["gallery", "backfill", *gallery_args(toy, folder, "--batch-size", "0")]) == 2
    assert "--batch-size must be >= 1" in one_error_line(capsys, "gallery")


def test_app_refuses_a_bad_report_port_dataset_or_save_folder_before_a_model(no_models, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text("{}")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "file").write_text("x")
    cases = [
        (["--report", str(tmp_path / "nope.json")], "does not exist"),
        (["--report", str(tmp_path / "run")], "is a folder (there is one in it"),
        (["--report", str(tmp_path / "list.json")], "not a report written by xbt eval"),
        (["--report", str(tmp_path / "run" / "report.json")], "not a report written by xbt eval"),
        (["--gallery", str(tmp_path / "file")], "not a gallery folder"),
        (["--dataset", "imagenet"], "--dataset 'imagenet' is unknown"),
        (["--save-gallery", str(tmp_path / "file")], "--save-gallery"),
        (["--port", "70000"], "--port must be in 1..65535"),
        (["--host", "no-such-host.invalid"], "--host no-such-host.invalid"),
    ]
    for flags, match in cases:
        assert main(["app", *flags]) == 2
        assert match in one_error_line(capsys, "app"), flags


def test_app_refuses_a_port_that_is_taken(no_models, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["app", "--port", str(port)]) == 2
    assert f"--port {port} on 127.0.0.1 is taken" in one_error_line(capsys, "app")


def test_push_refuses_what_is_not_a_saved_adapter_and_says_why_the_hub_failed(toy, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    changed = shutil.copytree(toy["adapter"], tmp_path / "changed")
    with open(changed / "heads.safetensors", "ab") as f:
        f.write(b"x")
    cases = [
        (tmp_path / "nope", "org/x", "does not exist"),
        (tmp_path / "file", "org/x", "is a file"),
        (tmp_path / "empty", "org/x", "is not an xbt adapter"),
        (changed, "org/x", "heads.safetensors is missing or corrupt"),
        (toy["adapter"], "org/x/y", "is not a Hub repo id"),
    ]
    for folder, repo, match in cases:
        assert main(["push", "--adapter", str(folder), "--repo", repo]) == 2
        assert match in one_error_line(capsys, "push"), (folder, repo)
    # the checks pass; the Hub cannot be reached (the tests run with HF_HUB_OFFLINE=1): one line, with the fix
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", "--adapter", toy["adapter"], "--repo", "org/x"]) == 2
    err = one_error_line(capsys, "push")
    assert "could not push" in err and "HF_HUB_OFFLINE must be unset" in err and "--token" in err
