"""Training-free baselines through xbt.fit: shapes, maps, fusion identities, alpha selection on support only,
save/load."""

import importlib

import pytest
import torch

import xbt
import xbt.baselines.alpha
import xbt.toy
from xbt import FusionAdapter, XBTError, fuse
from xbt.adapters.fusion import slerp
from xbt.baselines.alpha import pair_groups
from xbt.baselines.maps import DEFAULT_RIDGE, orthogonal_procrustes, ridge_map
from xbt.models.embedding import embed_images, embed_texts

from .conftest import tiny_open_clip


@pytest.fixture(scope="module")
def pairs():
    return xbt.toy.pair_list(40)


@pytest.fixture(scope="module")
def texts(captions_400):
    return list(dict.fromkeys(captions_400))[:200]  # fit drops repeats; keep the expected maps comparable


@pytest.fixture(scope="module")
def fitted(old_new, texts, pairs):
    old, new = old_new
    return {
        m: xbt.fit(old, new, texts, pairs=pairs, method=m, verbose=False)
        for m in ("procrustes", "linear", "slerp", "nlerp")
    }


def test_fit_returns_adapters_of_the_right_kind_and_shape(fitted, old_new, pairs):
    old, new = old_new
    images = [im for im, _ in pairs[:3]]
    for method, adapter in fitted.items():
        assert adapter.method == method
        assert isinstance(adapter, xbt.Adapter)
        assert adapter.requires_old_encoder is (method in ("slerp", "nlerp"))
        assert isinstance(adapter, FusionAdapter) is (method in ("slerp", "nlerp"))
        for out in (adapter.encode_text(["a red circle", "two blue squares"]), adapter.encode_image(images)):
            assert out.dtype == torch.float32 and out.shape[1] == old.embed_dim
            assert torch.allclose(out.norm(dim=-1), torch.ones(len(out)), atol=1e-5)
    assert fitted["procrustes"].projection.config() == {"d_new": new.embed_dim, "d_old": old.embed_dim, "hidden": 0}
    assert fitted["procrustes"].training["support"] == "text" and fitted["procrustes"].training["n_texts"] == 200


def test_procrustes_adapter_holds_the_orthogonal_map(fitted, old_new, texts):
    old, new = old_new
    w = fitted["procrustes"].projection.linear.weight.detach()
    assert w.shape == (32, 48)
    assert torch.allclose(w @ w.T, torch.eye(32), atol=1e-5)  # new is wider: orthonormal rows
    expected = orthogonal_procrustes(embed_texts(new, texts, verbose=False), embed_texts(old, texts, verbose=False))
    assert torch.allclose(w, expected, atol=1e-6)


def test_linear_adapter_holds_the_ridge_map(fitted, old_new, texts):
    old, new = old_new
    expected = ridge_map(
        embed_texts(new, texts, verbose=False), embed_texts(old, texts, verbose=False), ridge=DEFAULT_RIDGE
    )
    assert torch.allclose(fitted["linear"].projection.linear.weight.detach(), expected, atol=1e-6)
    assert fitted["linear"].training["ridge"] == DEFAULT_RIDGE
    other = xbt.fit(*old_new, texts, method="linear", ridge=10.0, verbose=False)
    assert not torch.allclose(other.projection.linear.weight, fitted["linear"].projection.linear.weight, atol=1e-3)


def test_image_and_joint_support(old_new, texts, pairs):
    old, new = old_new
    image = xbt.fit(old, new, texts, pairs=pairs, method="procrustes", support="image", verbose=False)
    joint = xbt.fit(old, new, texts, pairs=pairs, method="procrustes", support="joint", verbose=False)
    images = [im for im, _ in pairs]
    expected = orthogonal_procrustes(
        embed_images(new, images, verbose=False), embed_images(old, images, verbose=False)
    )
    assert torch.allclose(image.projection.linear.weight, expected, atol=1e-6)
    assert (image.training["n_support"], joint.training["n_support"]) == (40, 240)
    assert not torch.allclose(image.projection.linear.weight, joint.projection.linear.weight, atol=1e-3)
    with pytest.raises(XBTError, match="support='image' needs image-caption pairs"):
        xbt.fit(old, new, texts, method="procrustes", support="image", verbose=False)
    with pytest.raises(XBTError, match="unknown support"):
        xbt.fit(old, new, texts, method="procrustes", support="audio", verbose=False)


def test_fusion_endpoints_equal_the_old_query_and_the_aligned_new_query(fitted, old_new, pairs):
    old, _ = old_new
    base = fitted["procrustes"]
    texts = ["a red circle", "three green triangles on the left"]
    images = [im for im, _ in pairs[:4]]
    at_old = fuse(base, old, alpha=0.0, verbose=False)
    assert torch.equal(at_old.encode_text(texts), old.encode_text(texts))
    assert torch.equal(at_old.encode_image(images), old.encode_image(images))
    at_new = fuse(base, old, alpha=1.0, verbose=False)
    assert torch.equal(at_new.encode_text(texts), base.encode_text(texts))
    assert torch.equal(at_new.encode_image(images), base.encode_image(images))
    assert at_old.query_cost == {"text": ["old"], "image": ["old"]} and at_new.query_cost == {
        "text": ["new"],
        "image": ["new"],
    }
    mixed = fuse(base, old, alpha_text=0.3, alpha_image=0.8, verbose=False)
    assert torch.allclose(
        mixed.encode_text(texts), slerp(old.encode_text(texts), base.encode_text(texts), 0.3), atol=1e-6
    )
    assert torch.allclose(
        mixed.encode_image(images), slerp(old.encode_image(images), base.encode_image(images), 0.8), atol=1e-6
    )
    assert mixed.training["alpha_selection"]["text_query"] == {"alpha": 0.3, "source": "given"}
    assert mixed.query_cost == {"text": ["new", "old"], "image": ["new", "old"]}


def test_alpha_selection_sees_exactly_the_support_pairs(old_new, texts, pairs, monkeypatch):
    old, new = old_new
    calls = []
    real = xbt.baselines.alpha.select_alpha

    def spy(old_query, new_query, gallery, *args, **kwargs):
        calls.append((old_query, new_query, gallery))
        return real(old_query, new_query, gallery, *args, **kwargs)

    monkeypatch.setattr(importlib.import_module("xbt.baselines.fit"), "select_alpha", spy)
    adapter = xbt.fit(old, new, texts, pairs=pairs, method="slerp", verbose=False)
    images, captions = [im for im, _ in pairs], [c for _, c in pairs]
    base = adapter.base
    expected = [  # I2T: image queries vs old captions; T2I: caption queries vs old images
        (embed_images(old, images), base.embed_images(images), embed_texts(old, captions)),
        (embed_texts(old, captions), base.embed_texts(captions), embed_images(old, images)),
    ]
    assert len(calls) == 2
    for got, want in zip(calls, expected):
        for g, w in zip(got, want):
            assert torch.equal(g, w)
    selection = adapter.training["alpha_selection"]
    assert selection["n_pairs"] == 40 and selection["support"] == "pairs"
    assert (
        adapter.alpha_image == selection["image_query"]["alpha"]
        and adapter.alpha_text == selection["text_query"]["alpha"]
    )
    curve = selection["text_query"]["curve"]
    assert list(curve) == [str(a) for a in xbt.baselines.alpha.ALPHA_GRID]
    best = max(v["recall_at_1"] for v in curve.values())
    assert curve[str(adapter.alpha_text)]["recall_at_1"] == best


def test_fusion_without_pairs_needs_fixed_weights(old_new, texts):
    old, new = old_new
    with pytest.raises(XBTError, match="pass pairs=.*alpha=0.5"):
        xbt.fit(old, new, texts, method="slerp", verbose=False)
    with pytest.raises(XBTError, match="pass pairs=.*alpha=0.5"):
        xbt.fit(old, new, texts, method="nlerp", alpha_text=0.5, verbose=False)  # image weight still open
    adapter = xbt.fit(old, new, texts, method="nlerp", alpha=0.5, alpha_image=0.2, verbose=False)
    assert (adapter.alpha_text, adapter.alpha_image) == (0.5, 0.2)
    assert adapter.training["alpha_selection"]["image_query"]["source"] == "given"
    with pytest.raises(XBTError, match=r"alpha must lie in \[0, 1\]"):
        xbt.fit(old, new, texts, method="slerp", alpha=2.0, verbose=False)


def test_unknown_options_are_listed(old_new, texts):
    with pytest.raises(
        XBTError, match=r"unknown option\(s\) \['ridge'\] for method 'procrustes'.*valid options are \['support'\]"
    ):
        xbt.fit(*old_new, texts, method="procrustes", ridge=0.1, verbose=False)
    with pytest.raises(XBTError, match="base='xbt'"):
        xbt.fit(*old_new, texts, method="slerp", base="xbt", alpha=0.5, verbose=False)


@pytest.mark.parametrize("method", ["procrustes", "linear"])
def test_map_round_trip(fitted, method, old_new, pairs, tmp_path):
    _, new = old_new
    adapter = fitted[method]
    adapter.save_pretrained(tmp_path / method)
    loaded = xbt.load_adapter(tmp_path / method, new=new)
    assert type(loaded) is xbt.Adapter and loaded.method == method
    assert loaded.adapter_id() == adapter.adapter_id()
    images = [im for im, _ in pairs[:3]]
    assert torch.equal(loaded.encode_image(images), adapter.encode_image(images))


@pytest.mark.parametrize("method", ["slerp", "nlerp"])
def test_fusion_round_trip(fitted, method, old_new, pairs, tmp_path):
    old, new = old_new
    adapter = fitted[method]
    adapter.save_pretrained(tmp_path / method)
    loaded = xbt.load_adapter(tmp_path / method, new=new, old=old)
    assert isinstance(loaded, FusionAdapter) and loaded.method == method and loaded.kind == method
    assert (loaded.alpha_text, loaded.alpha_image) == (adapter.alpha_text, adapter.alpha_image)
    assert loaded.base.method == "procrustes" and loaded.training == adapter.training
    assert loaded.adapter_id() == adapter.adapter_id()
    texts, images = ["a small red circle"], [im for im, _ in pairs[:3]]
    assert torch.equal(loaded.encode_text(texts), adapter.encode_text(texts))
    assert torch.equal(loaded.encode_image(images), adapter.encode_image(images))
    with pytest.raises(
        XBTError, match=r"fusion adapter, which runs the OLD model.*xbt.load_adapter\(path, new=new, old=old\)"
    ):
        xbt.load_adapter(tmp_path / method, new=new)
    with pytest.raises(XBTError, match="32-d old model.*has 40-d embeddings"):
        xbt.load_adapter(tmp_path / method, new=new, old=tiny_open_clip(40, seed=3))


def test_fusion_loader_refuses_a_plain_adapter(fitted, old_new, tmp_path):
    old, new = old_new
    fitted["procrustes"].save_pretrained(tmp_path / "p")
    with pytest.raises(XBTError, match="plain 'procrustes' adapter, not a FusionAdapter"):
        FusionAdapter.from_pretrained(tmp_path / "p", new=new, old=old)


def test_fusion_on_top_of_an_xbt_adapter(old_new, texts, pairs, tmp_path):
    old, new = old_new
    base = xbt.fit(old, new, texts, epochs=1, verbose=False)
    fused = fuse(base, old, pairs=pairs, kind="nlerp", verbose=False)
    assert fused.method == "xbt+nlerp" and fused.requires_old_encoder and fused.base is base
    assert fused.training["base_method"] == "xbt"
    fused.save_pretrained(tmp_path / "x")
    loaded = xbt.load_adapter(tmp_path / "x", new=new, old=old)
    assert loaded.base.method == "xbt" and loaded.base.projection.hidden == base.projection.hidden
    assert torch.equal(loaded.encode_text(texts[:4]), fused.encode_text(texts[:4]))
    with pytest.raises(XBTError, match="already a FusionAdapter"):
        FusionAdapter(fused, old)


def test_fusion_refuses_what_it_cannot_do(fitted, old_new, pairs):
    old, new = old_new
    adapter = fitted["slerp"]
    with pytest.raises(XBTError, match="needs PIL images"):
        adapter.encode_image(new.preprocess_images([im for im, _ in pairs[:2]]))
    assert adapter.from_new_embeddings(torch.randn(2, 48), "text") is None  # a fused query needs the old model too
    with pytest.raises(XBTError, match="32-d old model.*has 40-d embeddings"):
        fuse(fitted["procrustes"], tiny_open_clip(40, seed=3), alpha=0.5)
    with pytest.raises(XBTError, match="unknown fusion kind"):
        fuse(fitted["procrustes"], old, alpha=0.5, kind="lerp")


def test_pair_groups_join_shared_captions_and_images(pairs):
    (a, ca), (b, _), (c, _) = pairs[0], pairs[1], pairs[2]
    groups = pair_groups([a, b, a, c], [ca, "x y", "other", "X  Y"]).tolist()
    # 0 and 2 share an image; 1 and 3 share a caption up to case and spacing
    assert groups[0] == groups[2] and groups[1] == groups[3] and groups[0] != groups[1]
    assert len(set(pair_groups([a, b, c], ["p", "q", "r"]).tolist())) == 3


def test_fusion_on_a_stage2_lora_adapter_round_trips(old_new, texts, pairs, tmp_path):
    old, new = old_new
    base = xbt.fit(
        old,
        new,
        texts,
        pairs=pairs,
        epochs=1,
        stage2={"image_tower": "lora", "epochs": 1, "rank": 2, "val_fraction": 0.0},
        verbose=False,
    )
    fused = fuse(base, old, pairs=pairs, verbose=False)
    fused.save_pretrained(tmp_path / "l")
    assert (tmp_path / "l" / "lora").is_dir()  # the base's LoRA weights travel with the fusion adapter
    loaded = xbt.load_adapter(tmp_path / "l", new=new, old=old)
    images = [im for im, _ in pairs[:3]]
    assert loaded.base.lora is not None and loaded.adapter_id() == fused.adapter_id()
    assert torch.allclose(loaded.encode_image(images), fused.encode_image(images), atol=1e-6)
    fused.merge()  # merging the base for serving leaves the fused queries unchanged
    assert torch.allclose(fused.encode_image(images), loaded.encode_image(images), atol=1e-5)


def test_plain_loader_refuses_a_fusion_folder(fitted, old_new, tmp_path):
    _, new = old_new
    fitted["slerp"].save_pretrained(tmp_path / "s")
    with pytest.raises(XBTError, match=r"'slerp' fusion adapter.*xbt\.load_adapter\(path, new=new, old=old\)"):
        xbt.Adapter.from_pretrained(tmp_path / "s", new=new)
