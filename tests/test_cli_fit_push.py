"""`xbt fit` and `xbt push` on the toy models.

The Hub cannot be reached from the test machines: uploads are checked at the ``HfApi`` boundary
(its ``create_repo`` / ``upload_folder`` methods are replaced by recorders).
"""

import json

import pytest

import xbt
from xbt.cli import main


@pytest.fixture(scope="module")
def caption_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "captions.txt"
    path.write_text("\n".join(xbt.toy.text_corpus(600)) + "\n\n")
    return path


def test_fit_then_eval_from_the_command_line(caption_file, tmp_path, capsys):
    out = tmp_path / "adapter"
    assert (
        main(
            [
                "fit",
                "--old",
                "xbt-toy-old",
                "--new",
                "xbt-toy-new",
                "--texts",
                str(caption_file),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    config = json.loads((out / "xbt_config.json").read_text())
    distinct = len(set(xbt.toy.text_corpus(600)))  # fit de-duplicates captions
    assert config["method"] == "xbt" and config["training"]["n_texts"] == distinct
    assert (
        main(
            [
                "eval",
                "--old",
                "xbt-toy-old",
                "--adapter",
                str(out),
                "--dataset",
                "toy",
                "--limit",
                "60",
                "--no-query-cost",
                "--out",
                str(tmp_path / "report"),
                "--quiet",
            ]
        )
        == 0
    )
    assert "new→old" in capsys.readouterr().out
    assert (tmp_path / "report" / "report.json").is_file()


def test_fit_reports_a_missing_caption_file(tmp_path, capsys):
    status = main(
        [
            "fit",
            "--old",
            "xbt-toy-old",
            "--new",
            "xbt-toy-new",
            "--texts",
            str(tmp_path / "nope.txt"),
            "--out",
            str(tmp_path / "a"),
        ]
    )
    assert status == 2
    assert "one caption per line" in capsys.readouterr().err


@pytest.fixture()
def hub_calls(monkeypatch):
    """Record what would reach the Hub: HfApi.create_repo and HfApi.upload_folder are replaced."""
    from pathlib import Path

    from huggingface_hub import HfApi

    calls = []

    def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
        calls.append(("create", repo_id, private, exist_ok))
        return f"https://hub.example/{repo_id}"

    def upload_folder(self, repo_id, folder_path, commit_message=None, allow_patterns=None, **kwargs):
        import fnmatch

        folder = Path(folder_path)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        uploaded = [
            f for f in files if allow_patterns is None or any(fnmatch.fnmatch(f, pat) for pat in allow_patterns)
        ]
        calls.append(("upload", repo_id, files, uploaded, (folder / "README.md").read_text(), commit_message))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_exactly_the_saved_folder(caption_file, tmp_path, hub_calls):
    old, new = xbt.toy.load_clips()
    adapter = xbt.fit(old, new, caption_file.read_text().split("\n")[:200], verbose=False, epochs=1)
    url = adapter.push_to_hub("org/toy-adapter", private=True)
    assert url == "https://hub.example/org/toy-adapter"
    assert hub_calls[0] == ("create", "org/toy-adapter", True, True)
    _, repo, files, uploaded, card, message = hub_calls[1]
    assert repo == "org/toy-adapter" and message == "xbt adapter (xbt)"
    assert files == uploaded == ["README.md", "heads.safetensors", "xbt_config.json"]  # everything saved, nothing else
    assert "xbt-toy-new" in card and "xbt-toy-old" in card and "xbt.load_adapter('org/toy-adapter', new=new)" in card
    adapter.save_pretrained(tmp_path / "saved", repo_id="org/toy-adapter")  # the very folder push_to_hub built
    assert (tmp_path / "saved" / "README.md").read_text() == card


def test_fit_push_to_hub_from_the_command_line(caption_file, tmp_path, hub_calls, capsys):
    out = tmp_path / "adapter"
    assert (
        main(
            [
                "fit",
                "--old",
                "xbt-toy-old",
                "--new",
                "xbt-toy-new",
                "--texts",
                str(caption_file),
                "--method",
                "procrustes",
                "--out",
                str(out),
                "--push-to-hub",
                "org/p",
                "--quiet",
            ]
        )
        == 0
    )
    assert "pushed" in capsys.readouterr().out
    _, repo, files, uploaded, card, _ = hub_calls[-1]
    assert repo == "org/p" and files == uploaded == sorted(p.name for p in out.iterdir())
    assert "xbt.load_adapter('org/p', new=new)" in card


def test_push_refuses_a_folder_that_is_not_an_adapter(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["push", "--adapter", str(tmp_path / "x"), "--repo", "org/x"]) == 2
    assert "not an xbt adapter" in capsys.readouterr().err


def test_fit_flags_are_generated_from_the_option_dataclasses(capsys):
    import dataclasses

    from xbt.cli import build_parser

    fit_parser = build_parser()._subparsers._group_actions[0].choices["fit"]
    flags = {s for a in fit_parser._actions for s in a.option_strings}
    for cls, prefix in ((xbt.Stage1Config, "--stage1-"), (xbt.Stage2Config, "--stage2-"), (xbt.BaselineConfig, "--")):
        for f in dataclasses.fields(cls):
            if f.name != "seed":  # one --seed drives every stage
                assert prefix + f.name.replace("_", "-") in flags, f.name
    assert {
        "--old-image-embeddings",
        "--checkpoint-dir",
        "--no-stage1",
        "--push-to-hub",
        "--no-stage2-confidence-weighting",
    } <= flags


@pytest.fixture(scope="module")
def pair_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs") / "ds"
    xbt.toy.pairs(24).save_to_disk(str(folder))
    return folder


@pytest.mark.parametrize("fmt", ["npy", "safetensors"])
def test_fit_reaches_stage2_options_and_old_gallery_vectors(caption_file, pair_folder, tmp_path, fmt, capsys):
    import numpy as np
    from safetensors.torch import save_file

    old = xbt.toy.load_model("xbt-toy-old")
    vectors = old.encode_image(list(xbt.toy.pairs(24)["image"]))
    path = tmp_path / f"old.{fmt}"
    if fmt == "npy":
        np.save(path, vectors.numpy())
    else:
        save_file({"embeddings": vectors}, str(path))
    out = tmp_path / "adapter"
    assert (
        main(
            [
                "fit",
                "--old",
                "xbt-toy-old",
                "--new",
                "xbt-toy-new",
                "--texts",
                str(caption_file),
                "--pairs",
                str(pair_folder),
                "--old-image-embeddings",
                str(path),
                "--stage1-epochs",
                "1",
                "--stage1-noise-std",
                "0.05",
                "--stage2-image-tower",
                "lora",
                "--stage2-epochs",
                "1",
                "--stage2-rank",
                "2",
                "--stage2-text-epochs",
                "1",
                "--no-stage2-confidence-weighting",
                "--stage2-caption-bank-size",
                "10",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    training = json.loads((out / "xbt_config.json").read_text())["training"]
    assert training["stage1"]["epochs"] == 1 and training["stage1"]["noise_std"] == 0.05
    stage2 = training["stage2"]
    assert (stage2["epochs"], stage2["rank"], stage2["text_epochs"], stage2["confidence_weighting"]) == (
        1,
        2,
        1,
        False,
    )
    assert stage2["batch_size"] == xbt.Stage2Config(image_tower="lora").batch_size  # flags not given: the default
    assert training["pair_old_vectors"] == {"images": "given", "captions": "embedded with the old model"}
    assert (
        training["metrics"]["stage2"]["image"]["history"]["caption_bank"]
        == training["metrics"]["stage2"]["n_train"] + 10
    )
    # the last lines say the verdict on the held-out pairs, per query kind, as the card does
    last = capsys.readouterr().out.strip().splitlines()
    verdicts = [line for line in last if line.startswith("backward compatible? ")]
    assert [line.split(": ")[0] for line in verdicts] == [
        "backward compatible? text->image",
        "backward compatible? image->text",
    ]
    assert all(
        v.split(": ")[1].split(" (")[0]
        in ("backward compatible", "within noise", "not backward compatible", "not measured on held-out pairs")
        for v in verdicts
    )


def test_fit_refuses_pickles_and_options_that_do_not_apply(caption_file, pair_folder, tmp_path, capsys):
    import numpy as np

    base = [
        "fit",
        "--old",
        "xbt-toy-old",
        "--new",
        "xbt-toy-new",
        "--texts",
        str(caption_file),
        "--out",
        str(tmp_path / "a"),
    ]
    np.save(tmp_path / "objects.npy", np.array([{"not": "floats"}], dtype=object), allow_pickle=True)
    assert main(base + ["--pairs", str(pair_folder), "--old-image-embeddings", str(tmp_path / "objects.npy")]) == 2
    assert "pickled Python objects, which xbt never loads" in capsys.readouterr().err
    (tmp_path / "v.pt").write_bytes(b"")
    assert main(base + ["--old-image-embeddings", str(tmp_path / "v.pt")]) == 2
    assert "never read" in capsys.readouterr().err
    assert main(base + ["--method", "procrustes", "--stage2-epochs", "1"]) == 2
    assert "['stage2'] only apply to method 'xbt'" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(base + ["--method", "linear", "--stage1-epochs", "1"]) == 2
    assert "apply to method 'xbt' only, not to method 'linear'" in capsys.readouterr().err
    assert main(base + ["--ridge", "0.2"]) == 2
    assert "['ridge'] apply to the training-free methods" in capsys.readouterr().err
    assert main(base + ["--method", "procrustes", "--ridge", "0.2"]) == 2
    assert "unknown option(s) ['ridge'] for method 'procrustes'" in capsys.readouterr().err


def test_push_refuses_a_folder_saved_by_an_older_xbt(tmp_path, capsys, hub_calls):
    from .test_persistence import write_format_1

    folder = tmp_path / "v1"

    old, new = xbt.toy.load_clips()
    write_format_1(xbt.fit(old, new, xbt.toy.text_corpus(100), method="procrustes", verbose=False), folder)
    assert main(["push", "--adapter", str(folder), "--repo", "org/x"]) == 2
    assert "saved by an older xbt" in capsys.readouterr().err and hub_calls == []
