"""A loaded adapter is the one that was saved: file digests, adapter_id, method names, fingerprints.

Real tiny models throughout (``old_new``), nothing mocked: each trial tampers with a saved folder
the way a bad copy, a mixed-up upload or a hand edit would, and loading must refuse it by name.
"""

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import xbt
from xbt import XBTError
from xbt.adapters.folder import FILES_KEY, USER_METHOD_KEY, known_method
from xbt.models.head import Projection
from xbt.toy import pair_list

from .conftest import fit_briefly

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "legacy_adapters"
TEXTS = ["a red circle on a gray background", "two blue squares", "a green triangle"]


@pytest.fixture(scope="module")
def pairs():
    return pair_list(12)


@pytest.fixture(scope="module")
def stage2_adapter(old_new, captions_400, pairs):
    """A stage-2 adapter whose folder has ``lora/`` (the guard off, so stage 2 is kept)."""
    old, new = old_new
    adapter = fit_briefly(old, new, captions_400[:100], pairs, stage2={"guard": False, "rank": 2})
    assert adapter.lora is not None
    return adapter


def saved(adapter, folder):
    adapter.save_pretrained(folder)
    return folder


def config_of(folder):
    return json.loads((folder / "xbt_config.json").read_text())


def edit_config(folder, edit):
    config = config_of(folder)
    edit(config)
    (folder / "xbt_config.json").write_text(json.dumps(config, indent=2))


def outputs(adapter, pairs):
    with torch.no_grad():
        return adapter.encode_text(TEXTS), adapter.encode_image([im for im, _ in pairs[:3]])


def load(folder, old_new, **kwargs):
    return xbt.load_adapter(folder, new=old_new[1], **kwargs)


def test_save_records_a_digest_of_each_file_but_config_and_card(stage1_adapter, stage2_adapter, tmp_path):
    one = config_of(saved(stage1_adapter, tmp_path / "one"))
    two = config_of(saved(stage2_adapter, tmp_path / "two"))
    assert set(one[FILES_KEY]) == {"heads.safetensors"}
    assert set(two[FILES_KEY]) == {"heads.safetensors", "lora/adapter_model.safetensors", "lora/adapter_config.json"}
    assert all(len(v) == 64 for v in two[FILES_KEY].values())
    assert USER_METHOD_KEY not in one and USER_METHOD_KEY not in two
    # digests are not content: the id is the in-memory one, and re-saving into the folder is accepted
    assert one["adapter_id"] == stage1_adapter.adapter_id()
    stage1_adapter.save_pretrained(tmp_path / "one")


def test_a_clean_round_trip_loads_without_warning_and_gives_identical_outputs(
    stage1_adapter, stage2_adapter, old_new, pairs, tmp_path
):
    for adapter in (stage1_adapter, stage2_adapter):
        folder = saved(adapter, tmp_path / adapter.method / str(adapter.lora is not None))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loaded = load(folder, old_new)
        assert loaded.adapter_id() == adapter.adapter_id()
        for x, y in zip(outputs(loaded, pairs), outputs(adapter, pairs), strict=True):
            assert torch.allclose(x, y, atol=1e-6) if adapter.lora is not None else torch.equal(x, y)


def test_heads_overwritten_under_a_valid_header_are_refused(stage1_adapter, old_new, tmp_path):
    folder = saved(stage1_adapter, tmp_path / "a")
    path = folder / "heads.safetensors"
    state = load_file(str(path))
    save_file({k: torch.randn_like(v) for k, v in state.items()}, str(path), metadata={"format": "xbt-adapter"})
    assert load_file(str(path)).keys() == state.keys()  # a valid file of the right shapes
    with pytest.raises(
        XBTError, match=r"heads\.safetensors is missing or corrupt.*re-save the adapter or re-download"
    ):
        load(folder, old_new)


def test_another_adapters_heads_are_refused(stage1_adapter, old_new, captions_400, tmp_path):
    other = xbt.fit(*old_new, captions_400[100:200], epochs=1, verbose=False)
    folder = saved(stage1_adapter, tmp_path / "a")
    shutil.copyfile(saved(other, tmp_path / "b") / "heads.safetensors", folder / "heads.safetensors")
    with pytest.raises(XBTError, match=r"heads\.safetensors is missing or corrupt.*another adapter's"):
        load(folder, old_new)


def test_an_edited_lora_alpha_is_refused(stage2_adapter, old_new, tmp_path):
    folder = saved(stage2_adapter, tmp_path / "a")
    path = folder / "lora" / "adapter_config.json"
    peft = json.loads(path.read_text())
    peft["lora_alpha"] = 1000
    path.write_text(json.dumps(peft))
    with pytest.raises(XBTError, match=r"lora/adapter_config\.json is missing or corrupt"):
        load(folder, old_new)


def test_a_removed_fingerprint_is_refused_unless_check_fingerprint_is_false(stage1_adapter, old_new, tmp_path):
    folder = saved(stage1_adapter, tmp_path / "a")
    edit_config(folder, lambda c: c["new_model"].pop("fingerprint"))
    with pytest.raises(XBTError, match=r"no weights fingerprint for its new model.*new_model\.fingerprint"):
        load(folder, old_new)
    # without the model check, the edit is still caught by the adapter_id
    with pytest.raises(XBTError, match=r"xbt_config\.json was edited after saving: its adapter_id"):
        load(folder, old_new, check_fingerprint=False)
    edit_config(folder, lambda c: c.update(adapter_id=None))
    with pytest.raises(XBTError, match="new_model.fingerprint"):
        load(folder, old_new)
    old = saved(stage1_adapter, tmp_path / "b")
    edit_config(old, lambda c: c["old_model"].pop("fingerprint"))
    with pytest.raises(XBTError, match=r"old model.*old_model\.fingerprint"):
        load(old, old_new)


def test_an_unknown_method_is_refused_with_the_valid_names(stage1_adapter, old_new, tmp_path):
    folder = saved(stage1_adapter, tmp_path / "a")
    edit_config(folder, lambda c: c.update(method="magic"))
    with pytest.raises(XBTError, match=r"unknown method \['magic'\].*'xbt', 'procrustes', 'linear', 'slerp'"):
        load(folder, old_new)


def test_method_names_xbt_gives_are_known_and_a_users_own_round_trips(old_new, tmp_path):
    for name in ("xbt", "procrustes", "linear", "slerp", "nlerp", "xbt+slerp", "linear+slerp", "xbt-stage1+2+slerp"):
        assert known_method(name), name
    for name in ("magic", "xbt+magic", "slerp+xbt", "", None):
        assert not known_method(name), name
    old, new = old_new
    mine = xbt.Adapter(new, Projection(new.embed_dim, old.embed_dim, hidden=0), method="my-own", old=old)
    folder = saved(mine, tmp_path / "mine")
    assert config_of(folder)[USER_METHOD_KEY] is True
    assert load(folder, old_new).method == "my-own"


def test_an_edited_adapter_id_is_refused(stage1_adapter, old_new, tmp_path):
    folder = saved(stage1_adapter, tmp_path / "a")
    edit_config(folder, lambda c: c.update(adapter_id="0" * 24))
    with pytest.raises(XBTError, match=r"xbt_config\.json was edited after saving: its adapter_id is '0{24}'"):
        load(folder, old_new)
    # an edit of the content that keeps the id: refused too
    folder = saved(stage1_adapter, tmp_path / "b")
    edit_config(folder, lambda c: c["training"].update(epochs=99))
    with pytest.raises(XBTError, match="adapter_id"):
        load(folder, old_new)


def test_a_folder_without_digests_loads_with_one_warning(stage1_adapter, old_new, pairs, tmp_path):
    folder = saved(stage1_adapter, tmp_path / "a")
    edit_config(folder, lambda c: c.pop(FILES_KEY))
    with pytest.warns(UserWarning, match=r"recorded no file digests.*Re-save it") as caught:
        loaded = load(folder, old_new)
    assert len(caught) == 1
    assert torch.equal(outputs(loaded, pairs)[0], outputs(stage1_adapter, pairs)[0])
    loaded.save_pretrained(folder)  # re-saving records them
    assert FILES_KEY in config_of(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(folder, old_new)


@pytest.mark.parametrize("kind", ["stage1", "stage2", "slerp"])
def test_the_legacy_fixtures_load_with_one_warning_about_digests(kind):
    old, new = xbt.toy.load_clips(device="cpu")
    folder = FIXTURES / kind
    assert FILES_KEY not in config_of(folder)  # saved before digests were recorded
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter = xbt.load_adapter(folder, new=new, old=old if kind == "slerp" else None)
    assert [type(w.message) for w in caught] == [UserWarning]
    assert "recorded no file digests" in str(caught[0].message) and "Re-save" in str(caught[0].message)
    assert adapter.method == config_of(folder)["method"]
