"""Regressions of issue 11's correctness smells: each test failed on the code before the fix."""

import importlib
import json
import math

import pytest
import torch

import xbt
from xbt import XBTError
from xbt.datasets import RetrievalDataset
from xbt.io import dumps_json
from xbt.toy import pair_list

from .conftest import tiny_open_clip

embed_module = importlib.import_module("xbt.embed")


def _fit2(old, new, texts, pairs, **kw):
    stage2 = {"epochs": 2, "batch_size": 8, "val_fraction": 0.0, **kw.pop("stage2", {})}
    return xbt.fit(old, new, texts, pairs=pairs, epochs=1, stage2=stage2, verbose=False, **kw)


@pytest.fixture(scope="module")
def stage1(old_new, captions_400):
    return xbt.fit(*old_new, captions_400[:100], epochs=1, verbose=False)


def test_resuming_with_other_pairs_of_the_same_count_is_refused(old_new, captions_400, tmp_path):
    """(1) The checkpoint key hashed the config and the pair *count*: other pairs silently resumed stale weights."""
    old, new = old_new
    pairs = pair_list(80)
    _fit2(old, new, captions_400[:60], pairs[:40], checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(XBTError, match="different run .*training data"):
        _fit2(old, new, captions_400[:60], pairs[40:], checkpoint_dir=tmp_path / "ckpt")
    changed = [(im, c + " again") for im, c in pairs[:40]]  # same images, other captions
    with pytest.raises(XBTError, match="different run"):
        _fit2(old, new, captions_400[:60], changed, checkpoint_dir=tmp_path / "ckpt")
    other_vectors = old.encode_image([im for im, _ in pairs[40:]])  # other OLD vectors for the same pairs
    with pytest.raises(XBTError, match="different run"):
        _fit2(old, new, captions_400[:60], pairs[:40], old_image_embeddings=other_vectors, checkpoint_dir=tmp_path / "ckpt")


def test_no_validation_split_writes_null_not_nan(old_new, captions_400, tmp_path):
    """(2) Without a validation split stage 2 wrote NaN into the adapter's JSON, which strict readers refuse."""
    old, new = old_new
    adapter = _fit2(old, new, captions_400[:60], pair_list(12))  # under 20 pairs: nothing held out
    adapter.save_pretrained(tmp_path / "a")

    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    config = json.loads((tmp_path / "a" / "xbt_config.json").read_text(), parse_constant=refuse)
    record = config["training"]["metrics"]["stage2"]
    assert record["n_val"] == 0 and record["image"]["choice"] is None
    epochs = config["training"]["stage2"]["epochs"]
    assert record["image"]["history"]["val_geo_mean_rank"] == [None] * (epochs + 1)  # the start and each epoch: nothing to score
    # the one JSON writer turns any other non-finite number into null too
    assert json.loads(dumps_json({"x": [1.0, math.inf, math.nan]}), parse_constant=refuse) == {"x": [1.0, None, None]}


@pytest.mark.parametrize("method", ["xbt", "xbt+pairs", "procrustes", "linear", "slerp"])
def test_fit_leaves_the_callers_global_rng_alone(old_new, captions_400, method):
    """(3) ``torch.manual_seed`` inside fit (and unseeded module init) changed the caller's global RNG."""
    old, new = old_new
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    if method == "xbt+pairs":
        _fit2(old, new, captions_400[:60], pair_list(12))
    else:
        xbt.fit(old, new, captions_400[:60], pairs=pair_list(12), method=method, epochs=1, verbose=False) if method == "xbt" \
            else xbt.fit(old, new, captions_400[:60], pairs=pair_list(12), method=method, verbose=False)
    assert torch.equal(torch.get_rng_state(), before)


def test_same_seed_still_gives_the_same_stage2_adapter(old_new, captions_400):
    """The seed alone decides the weights: the caller's RNG state does not leak in."""
    old, new = old_new
    torch.manual_seed(1)
    a = _fit2(old, new, captions_400[:60], pair_list(12))
    torch.manual_seed(2)
    b = _fit2(old, new, captions_400[:60], pair_list(12))
    assert a.adapter_id() == b.adapter_id()


@pytest.mark.parametrize("option", [{"stage2": {"epochs": 1}}, {"old_image_embeddings": torch.zeros(4, 32)},
                                    {"checkpoint_dir": "ckpt"}, {"use_stage1": False}])
@pytest.mark.parametrize("method", ["procrustes", "slerp"])
def test_xbt_only_options_are_refused_for_other_methods(old_new, captions_400, method, option):
    """(4) For non-XBT methods, stage2=, old_image_embeddings=, checkpoint_dir=, use_stage1= were dropped silently."""
    with pytest.raises(XBTError, match=rf"\['{next(iter(option))}'\] only apply to method 'xbt'.*method '{method}'"):
        xbt.fit(*old_new, captions_400[:60], pairs=pair_list(4), method=method, alpha=0.5, verbose=False, **option)


def test_a_model_with_other_weights_is_refused_unless_opted_out(stage1, old_new, tmp_path):
    """(5) A model whose weights do not match only warned; now an error naming both fingerprints and the fix."""
    old, new = old_new
    stage1.save_pretrained(tmp_path / "a")
    other_new, other_old = tiny_open_clip(48, seed=10), tiny_open_clip(32, seed=11)
    with pytest.raises(XBTError, match=rf"new model given .*fingerprint \w+\).*fingerprint {new.fingerprint}\).*check_fingerprint=False"):
        xbt.load_adapter(tmp_path / "a", new=other_new)
    with pytest.raises(XBTError, match=rf"old model given .*fingerprint {old.fingerprint}\)"):
        xbt.load_adapter(tmp_path / "a", new=new, old=other_old)
    loaded = xbt.load_adapter(tmp_path / "a", new=other_new, check_fingerprint=False)
    assert loaded.new_ref == stage1.new_ref  # it still describes the model it was trained for
    with pytest.raises(XBTError, match="old model given"):
        xbt.fuse(stage1, other_old, alpha=0.5)
    assert xbt.fuse(stage1, other_old, alpha=0.5, check_fingerprint=False).alpha_text == 0.5


def test_evaluate_refuses_split_and_root_for_a_dataset_object(stage1, old_new, tmp_path):
    """(6) ``evaluate`` ignored ``split=`` / ``root=`` when given a dataset object."""
    images, captions = xbt.toy.test_split(4)
    ds = RetrievalDataset(images, captions, "toy", "test")
    for extra in ({"split": "val"}, {"root": tmp_path}, {"source": "hf"}):
        with pytest.raises(XBTError, match=rf"\['{next(iter(extra))}'\] only apply when dataset is a name"):
            xbt.evaluate(old_new[0], stage1, dataset=ds, verbose=False, query_cost=False, **extra)
    report = xbt.evaluate(old_new[0], stage1, dataset=ds, limit=2, cache=False, verbose=False, query_cost=False)
    assert report.n_images == 2


def test_inputs_are_hashed_only_when_the_cache_is_on(stage1, old_new, monkeypatch):
    """(7) Inputs were hashed even with the cache off (wasted work that also skewed the query-cost ratio)."""
    calls = []
    for name in ("hash_texts", "hash_images"):
        real = getattr(embed_module, name)
        monkeypatch.setattr(embed_module, name, lambda items, real=real, name=name: calls.append(name) or real(items))
    images = [im for im, _ in pair_list(2)]
    stage1.encode_text(["a red circle"])
    stage1.encode_image(images)
    assert calls == []
    stage1.embed_texts(["a red circle"], verbose=False)  # cache on: the key needs the hash
    assert calls == ["hash_texts"]


def test_resaving_after_an_xbt_upgrade_is_allowed(stage1, tmp_path):
    """(8) ``adapter_id`` included the xbt version, so re-saving the same adapter after an upgrade was refused."""
    stage1.save_pretrained(tmp_path / "a")
    path = tmp_path / "a" / "xbt_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "xbt_version": "0.0.1"}))  # as an older xbt wrote it
    stage1.save_pretrained(tmp_path / "a")  # same adapter: accepted, and rewritten by this version
    assert json.loads(path.read_text())["xbt_version"] == xbt.__version__
    assert stage1.config().replace(xbt_version="9.9.9").content() == stage1.config().content()


def test_empty_batches_give_empty_tensors(stage1, old_new):
    """(10) ``adapter.encode_text([])`` was refused with a message about stage 1."""
    old, _ = old_new
    for adapter in (stage1, xbt.fuse(stage1, old, alpha=0.5)):
        assert adapter.encode_text([]).shape == (0, 32) and adapter.encode_text([]).dtype == torch.float32
        assert adapter.encode_image([]).shape == (0, 32)


def test_a_non_image_gets_a_clear_error(stage1, old_new):
    """(11) ``adapter.encode_image(["not an image"])`` failed with an AttributeError."""
    old, _ = old_new
    for adapter in (stage1, xbt.fuse(stage1, old, alpha=0.5)):
        with pytest.raises(XBTError, match=r"images\[0\] is a str .*not a PIL.Image"):
            adapter.encode_image(["not an image"])
    with pytest.raises(XBTError, match="single str"):
        stage1.encode_image("photo.jpg")
