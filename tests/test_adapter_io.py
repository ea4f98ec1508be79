"""save_pretrained / from_pretrained: exact round trip, atomic writes, refusals with clear messages."""

import importlib
import json

import pytest
import torch

import xbt
from xbt import XBTError
from xbt.toy import pair_list

from .conftest import tiny_open_clip


@pytest.fixture(scope="module")
def adapter(old_new, captions_400):
    old, new = old_new
    return xbt.fit(old, new, captions_400[:200], epochs=3, verbose=False)


def test_round_trip_is_exact(adapter, old_new, captions_400, tmp_path):
    _, new = old_new
    adapter.save_pretrained(tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["README.md", "heads.safetensors", "xbt_config.json"]
    loaded = xbt.load_adapter(tmp_path / "a", new=new)
    probe = captions_400[300:320]
    assert torch.equal(loaded.encode_text(probe), adapter.encode_text(probe))
    assert loaded.adapter_id() == adapter.adapter_id()
    assert loaded.method == "xbt" and loaded.old_ref.embed_dim == 32 and loaded.old_ref.name == "tiny-old"
    assert loaded.heads["text"] is loaded.heads["image"] is loaded.projection  # one shared head, saved once
    # no temporary folders are left beside the adapter
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_resaving_the_same_adapter_is_allowed(adapter, tmp_path):
    adapter.save_pretrained(tmp_path / "a")
    adapter.save_pretrained(tmp_path / "a")


def test_refuses_to_overwrite_a_different_adapter(adapter, old_new, captions_400, tmp_path):
    old, new = old_new
    other = xbt.fit(old, new, captions_400[:200], epochs=3, seed=99, verbose=False)
    adapter.save_pretrained(tmp_path / "a")
    with pytest.raises(XBTError, match="already holds a different adapter.*overwrite=True"):
        other.save_pretrained(tmp_path / "a")
    # nothing was lost: the first adapter is still there, intact
    assert json.loads((tmp_path / "a" / "xbt_config.json").read_text())["adapter_id"] == adapter.adapter_id()
    other.save_pretrained(tmp_path / "a", overwrite=True)
    assert json.loads((tmp_path / "a" / "xbt_config.json").read_text())["adapter_id"] == other.adapter_id()


def test_refuses_a_folder_of_foreign_files(adapter, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("mine")
    with pytest.raises(XBTError, match="cannot read as an adapter.*not an xbt adapter"):
        adapter.save_pretrained(tmp_path / "a")
    assert (tmp_path / "a" / "notes.txt").read_text() == "mine"


def test_loading_against_a_new_model_of_another_dim(adapter, tmp_path):
    adapter.save_pretrained(tmp_path / "a")
    wrong = tiny_open_clip(40, seed=9)
    with pytest.raises(XBTError, match=r"48-d new model.*has 40-d embeddings"):
        xbt.load_adapter(tmp_path / "a", new=wrong)


def test_foreign_and_corrupt_folders(adapter, old_new, tmp_path):
    _, new = old_new
    (tmp_path / "empty").mkdir()
    with pytest.raises(XBTError, match="not an xbt adapter"):
        xbt.load_adapter(tmp_path / "empty", new=new)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))  # PEFT's own file
    with pytest.raises(XBTError, match="not an xbt adapter config"):
        xbt.load_adapter(tmp_path / "other", new=new)
    adapter.save_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / "heads.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(XBTError, match="missing or corrupt"):
        xbt.load_adapter(tmp_path / "bad", new=new)
    with pytest.raises(XBTError, match="neither an existing folder nor a Hub repo id"):
        xbt.load_adapter(tmp_path / "does" / "not" / "exist", new=new)


# the regressions this file guards (each failed on the code before its fix)


embed_module = importlib.import_module("xbt.models.embedding")


def test_inputs_are_hashed_only_when_the_cache_is_on(stage1_adapter, old_new, monkeypatch):
    """Inputs were hashed even with the cache off (wasted work that also skewed the query-cost ratio)."""
    calls = []
    for name in ("hash_texts", "hash_images"):
        real = getattr(embed_module, name)
        monkeypatch.setattr(embed_module, name, lambda items, real=real, name=name: calls.append(name) or real(items))
    images = [im for im, _ in pair_list(2)]
    stage1_adapter.encode_text(["a red circle"])
    stage1_adapter.encode_image(images)
    assert calls == []
    stage1_adapter.embed_texts(["a red circle"], verbose=False)  # cache on: the key needs the hash
    assert calls == ["hash_texts"]


def test_empty_batches_give_empty_tensors(stage1_adapter, old_new):
    """``adapter.encode_text([])`` was refused with a message about stage 1."""
    old, _ = old_new
    for adapter in (stage1_adapter, xbt.fuse(stage1_adapter, old, alpha=0.5)):
        assert adapter.encode_text([]).shape == (0, 32) and adapter.encode_text([]).dtype == torch.float32
        assert adapter.encode_image([]).shape == (0, 32)


def test_a_non_image_gets_a_clear_error(stage1_adapter, old_new):
    """``adapter.encode_image(["not an image"])`` failed with an AttributeError."""
    old, _ = old_new
    for adapter in (stage1_adapter, xbt.fuse(stage1_adapter, old, alpha=0.5)):
        with pytest.raises(XBTError, match=r"images\[0\] is a str .*not a PIL.Image"):
            adapter.encode_image(["not an image"])
    with pytest.raises(XBTError, match="single str"):
        stage1_adapter.encode_image("photo.jpg")
