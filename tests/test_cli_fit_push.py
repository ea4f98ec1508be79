"""`xbt fit` and `xbt push` on the toy models (the Hub itself is replaced by a recorder: no network)."""

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
    assert main(["fit", "--old", "xbt-toy-old", "--new", "xbt-toy-new", "--texts", str(caption_file),
                 "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    distinct = len(set(xbt.toy.text_corpus(600)))  # fit de-duplicates captions
    assert config["method"] == "xbt" and config["training"]["n_texts"] == distinct
    assert main(["eval", "--old", "xbt-toy-old", "--adapter", str(out), "--dataset", "toy", "--limit", "60",
                 "--no-query-cost", "--out", str(tmp_path / "report"), "--quiet"]) == 0
    assert "new→old" in capsys.readouterr().out
    assert (tmp_path / "report" / "report.json").is_file()


def test_fit_reports_a_missing_caption_file(tmp_path, capsys):
    status = main(["fit", "--old", "xbt-toy-old", "--new", "xbt-toy-new", "--texts", str(tmp_path / "nope.txt"),
                   "--out", str(tmp_path / "a")])
    assert status == 2
    assert "one caption per line" in capsys.readouterr().err


def test_push_uploads_the_folder_with_a_model_card(caption_file, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, private))
            return f"https://hub.example/{repo_id}"

        def upload_folder(self, repo_id, folder_path, commit_message):
            files = sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())
            card = (__import__("pathlib").Path(folder_path) / "README.md").read_text()
            calls.append(("upload", repo_id, files, card))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    old, new = xbt.toy.load_clips()
    adapter = xbt.fit(old, new, caption_file.read_text().split("\n")[:200], verbose=False, epochs=1)
    url = adapter.push_to_hub("org/toy-adapter", private=True)
    assert url == "https://hub.example/org/toy-adapter"
    upload = [c for c in calls if c[0] == "upload"][0]
    assert upload[1] == "org/toy-adapter"
    assert upload[2] == ["README.md", "adapter_config.json", "projection.safetensors"]
    assert "xbt-toy-new" in upload[3] and "xbt-toy-old" in upload[3] and "org/toy-adapter" in upload[3]


def test_push_refuses_a_folder_that_is_not_an_adapter(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["push", "--adapter", str(tmp_path / "x"), "--repo", "org/x"]) == 2
    assert "not an xbt adapter" in capsys.readouterr().err
