"""Adapter folders saved before the float64 weights fingerprint (commit 5e60fc4) still load.

The fixtures under tests/fixtures/legacy_adapters were written by xbt at commit 24e3646
(scripts/assets/legacy_adapter_fixtures.py) on the shipped toy shapes models; their refs record
the float32-sum fingerprint and no ``fingerprint_scheme``. Everything here runs the real toy
models and the real fingerprints: nothing is mocked.
"""

import dataclasses
import hashlib
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import xbt
from xbt import Adapter, ModelRef, XBTError
from xbt.adapters.config import FINGERPRINT_SCHEME
from xbt.models.head import Projection

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "legacy_adapters"
PROBES = json.loads((FIXTURES / "probes.json").read_text())
KINDS = ["stage1", "stage2", "slerp"]
ONLY_NAME_CHECKED = (
    r"earlier xbt.*cannot be recomputed here.*only the name, backend and width.*check_fingerprint=False"
)


@pytest.fixture(scope="module")
def models():
    old, new = xbt.toy.load_clips(device="cpu")
    return {"old": old, "new": new}


@pytest.fixture(scope="module")
def probes():
    """The probe captions and images, rebuilt as probes.json says (and checked against what it recorded)."""
    images, captions = xbt.toy.test_split(8)
    texts = [captions[i][i % 5] for i in range(8)]
    assert texts == PROBES["texts"]["values"]
    images = xbt.toy.test_split(4)[0]
    assert [hashlib.sha256(im.convert("RGB").tobytes()).hexdigest() for im in images] == PROBES["images"]["sha256_rgb"]
    return texts, images


@pytest.fixture(scope="module")
def expected():
    return load_file(str(FIXTURES / PROBES["expected"]["file"]))


#: the one warning every folder saved before file digests were recorded loads with (tests/test_adapter_integrity.py)
NO_DIGESTS = r".*recorded no file digests"


def load(folder, models, kind, **kwargs):
    """Load a fixture, ignoring the no-digests warning (these tests are about the fingerprint)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NO_DIGESTS, category=UserWarning)
        return xbt.load_adapter(folder, new=models["new"], old=models["old"] if kind == "slerp" else None, **kwargs)


def outputs(adapter, probes):
    texts, images = probes
    with torch.no_grad():
        return adapter.encode_text(texts), adapter.encode_image(images)


def assert_expected(adapter, probes, expected, kind):
    text, image = outputs(adapter, probes)
    torch.testing.assert_close(text, expected[f"{kind}.text"], rtol=0, atol=1e-6)
    torch.testing.assert_close(image, expected[f"{kind}.image"], rtol=0, atol=1e-6)


def edited_copy(tmp_path, kind, role="new_model", **changes):
    """A copy of fixture ``kind`` whose ``role`` ref has ``changes`` applied."""
    folder = tmp_path / kind
    shutil.copytree(FIXTURES / kind, folder)
    path = folder / "xbt_config.json"
    config = json.loads(path.read_text())
    config[role].update(changes)
    path.write_text(json.dumps(config, indent=2))
    return folder


def test_the_legacy_fingerprint_is_the_one_the_fixtures_recorded(models):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        recorded = PROBES["made_with"]["fingerprints"]
        for role in ("old", "new"):
            enc = models[role]
            assert enc.legacy_fingerprint(PROBES["made_with"]["torch_num_threads"]) == recorded[enc.name]
            assert torch.get_num_threads() == 1  # the caller's thread count is restored
            assert enc.fingerprint != recorded[enc.name]  # today's float64 fingerprint is another value
            assert enc.refresh_fingerprint() == enc.fingerprint  # and it is stable
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("kind", KINDS)
def test_a_legacy_folder_loads_without_warning_and_gives_the_recorded_outputs(kind, models, probes, expected):
    config = json.loads((FIXTURES / kind / "xbt_config.json").read_text())
    assert "fingerprint_scheme" not in config["new_model"]  # really an earlier xbt's folder
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapter = load(FIXTURES / kind, models, kind)
    assert type(adapter).__name__ == PROBES["adapters"][kind]["class"]
    assert_expected(adapter, probes, expected, kind)


def test_another_new_model_is_still_refused(models):
    with pytest.raises(XBTError, match="works with a 96-d new model"):
        xbt.load_adapter(FIXTURES / "stage1", new=models["old"])
    # the same width, another architecture and name: no thread count gives its fingerprint, and its name differs
    other = xbt.toy.load_model("xbt-patterns-old", device="cpu")
    assert other.embed_dim == models["new"].embed_dim and other.backend != models["new"].backend
    with pytest.raises(XBTError, match=r"new model given \(xbt-patterns-old.*is not the one.*name and backend differ"):
        xbt.load_adapter(FIXTURES / "stage2", new=other)
    other_old = xbt.toy.load_model("xbt-patterns-new", device="cpu")
    assert other_old.embed_dim == models["old"].embed_dim
    with pytest.raises(XBTError, match=r"old model given \(xbt-patterns-new.*is not the one.*name differs"):
        xbt.load_adapter(FIXTURES / "slerp", new=models["new"], old=other_old)


def test_an_unreproducible_legacy_fingerprint_loads_with_one_warning(tmp_path, models, probes, expected):
    folder = edited_copy(tmp_path, "stage1", fingerprint="0123456789abcdef01234567")
    with pytest.warns(UserWarning, match=ONLY_NAME_CHECKED) as caught:
        adapter = load(folder, models, "stage1")
    assert len(caught) == 1
    assert_expected(adapter, probes, expected, "stage1")


def test_an_unreproducible_old_fingerprint_of_a_fusion_warns_once(tmp_path, models, probes, expected):
    """The fusion checks its old model twice (base adapter, then fusion): one warning."""
    folder = edited_copy(tmp_path, "slerp", role="old_model", fingerprint="fedcba9876543210fedcba98")
    with pytest.warns(UserWarning, match=ONLY_NAME_CHECKED) as caught:
        adapter = load(folder, models, "slerp")
    assert len(caught) == 1 and "old model" in str(caught[0].message)
    assert_expected(adapter, probes, expected, "slerp")


def test_an_unreproducible_legacy_fingerprint_with_another_name_is_refused(tmp_path, models):
    folder = edited_copy(tmp_path, "stage1", fingerprint="00112233445566778899aabb", name="xbt-toy-newer")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            XBTError, match=r"new model given \(xbt-toy-new.*is not the one.*'xbt-toy-newer'.*name differs"
        ):
            load(folder, models, "stage1")
    assert load(folder, models, "stage1", check_fingerprint=False).new_ref.name == "xbt-toy-newer"


def test_a_ref_of_this_xbt_carries_its_scheme_and_a_mismatch_is_refused_as_before(tmp_path, models):
    old, new = models["old"], models["new"]
    ref = ModelRef.of(new)
    assert ref.fingerprint_scheme == FINGERPRINT_SCHEME == 2
    assert ModelRef.from_dict(dataclasses.asdict(ref)) == ref
    assert ModelRef.from_dict({**dataclasses.asdict(ref), "from_the_future": 1}) == ref  # unknown keys ignored
    legacy = {k: v for k, v in dataclasses.asdict(ref).items() if k != "fingerprint_scheme"}
    assert ModelRef.from_dict(legacy).fingerprint_scheme is None  # an earlier xbt's ref

    Adapter(new, Projection(new.embed_dim, old.embed_dim, hidden=0), old=old).save_pretrained(tmp_path / "today")
    config = json.loads((tmp_path / "today" / "xbt_config.json").read_text())
    assert config["new_model"]["fingerprint_scheme"] == config["old_model"]["fingerprint_scheme"] == 2
    # a current-scheme fingerprint that differs is refused outright, even one the float32 formula gives
    path = tmp_path / "today" / "xbt_config.json"
    config["new_model"]["fingerprint"] = new.legacy_fingerprint(torch.get_num_threads())
    path.write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(XBTError, match=r"new model given \(xbt-toy-new, weights fingerprint \w+\) is not the one"):
            xbt.load_adapter(tmp_path / "today", new=new)


def test_check_returns_the_ref_refreshed_to_the_current_fingerprint(models):
    new = models["new"]
    config = json.loads((FIXTURES / "stage1" / "xbt_config.json").read_text())
    legacy = ModelRef.from_dict(config["new_model"])
    refreshed = legacy.check(new, "new", "the stage1 fixture")
    assert refreshed == dataclasses.replace(legacy, fingerprint=new.fingerprint, fingerprint_scheme=2)
    assert refreshed.check(new, "new", "the stage1 fixture") is refreshed
    assert legacy.check(new, "new", "the stage1 fixture", check_fingerprint=False) is legacy


@pytest.mark.parametrize("kind", KINDS)
def test_a_re_saved_legacy_adapter_loads_without_warning_and_gives_the_same_outputs(
    kind, tmp_path, models, probes, expected
):
    adapter = load(FIXTURES / kind, models, kind)
    adapter.save_pretrained(tmp_path / "again")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load(tmp_path / "again", models, kind)
    assert_expected(again, probes, expected, kind)


def test_a_re_saved_legacy_adapter_records_the_current_fingerprint(tmp_path, models):
    load(FIXTURES / "stage1", models, "stage1").save_pretrained(tmp_path / "again")
    config = json.loads((tmp_path / "again" / "xbt_config.json").read_text())
    assert config["new_model"]["fingerprint"] == models["new"].fingerprint
    assert config["new_model"]["fingerprint_scheme"] == FINGERPRINT_SCHEME
