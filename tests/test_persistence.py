"""Adapter folders: every method round-trips, format-1 folders load, the future is refused, the model
card, and loading by repo id from the Hub cache.

The Hub cannot be reached from the test machines: Hub loading is tested on a hand-built cache
(``HF_HUB_CACHE`` layout) with ``HF_HUB_OFFLINE=1``, and uploads at the ``HfApi`` boundary
(tests/test_cli_fit_push.py).
"""

import fnmatch
import json

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file

import xbt
from xbt import Adapter, FusionAdapter, ModelRef, XBTError
from xbt.adapters.hub import hub_model_id
from xbt.data.retrieval import RetrievalDataset
from xbt.models.head import Projection
from xbt.toy import pair_list

from .conftest import tiny_open_clip

METHODS = [
    "procrustes",
    "linear",
    "slerp",
    "nlerp",
    "xbt stage 1",
    "xbt stage 1+2",
    "xbt stage 1+2 + nlerp",
    "two heads",
]


@pytest.fixture(scope="module")
def pairs():
    return pair_list(40)


@pytest.fixture(scope="module")
def adapters(old_new, captions_400, pairs):
    old, new = old_new
    texts = captions_400[:150]
    out = {
        m: xbt.fit(old, new, texts, pairs=pairs, method=m, verbose=False)
        for m in ("procrustes", "linear", "slerp", "nlerp")
    }
    out["xbt stage 1"] = xbt.fit(old, new, texts, epochs=1, verbose=False)
    out["xbt stage 1+2"] = xbt.fit(
        old,
        new,
        texts,
        pairs=pairs,
        epochs=1,
        stage2={"image_tower": "lora", "epochs": 1, "rank": 2, "val_fraction": 0.0},
        verbose=False,
    )
    out["xbt stage 1+2 + nlerp"] = xbt.fuse(out["xbt stage 1+2"], old, pairs=pairs, kind="nlerp", verbose=False)
    image_head = Projection.from_linear(
        torch.nn.functional.normalize(torch.randn(32, 48, generator=torch.Generator().manual_seed(0)), dim=1)
    )
    out["two heads"] = Adapter(
        new, heads={"text": out["xbt stage 1"].projection, "image": image_head}, method="two-heads", old=old
    )
    return out


def probes(pairs):
    return ["a red circle on a gray background", "two blue squares"], [im for im, _ in pairs[:4]]


def assert_same_outputs(a, b, pairs, exact):
    texts, images = probes(pairs)
    for x, y in ((a.encode_text(texts), b.encode_text(texts)), (a.encode_image(images), b.encode_image(images))):
        # PEFT re-injects LoRA tensors exactly; float summation order can differ by an ulp
        assert torch.equal(x, y) if exact else torch.allclose(x, y, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_save_then_load_gives_the_same_adapter_for_every_method(adapters, name, old_new, pairs, tmp_path):
    old, new = old_new
    adapter = adapters[name]
    adapter.save_pretrained(tmp_path / "a")
    files = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*") if p.is_file())
    lora = ["lora/adapter_config.json", "lora/adapter_model.safetensors"] if "1+2" in name else []
    assert files == sorted(["README.md", "heads.safetensors", "xbt_config.json", *lora])
    loaded = xbt.load_adapter(tmp_path / "a", new=new, old=old)
    assert type(loaded) is type(adapter) and loaded.method == adapter.method and loaded.training == adapter.training
    assert loaded.adapter_id() == adapter.adapter_id()
    assert_same_outputs(loaded, adapter, pairs, exact="1+2" not in name)


def test_separate_heads_are_saved_apart_and_a_shared_one_once(adapters, old_new, tmp_path):
    from safetensors.torch import load_file

    adapters["two heads"].save_pretrained(tmp_path / "two")
    adapters["xbt stage 1"].save_pretrained(tmp_path / "one")
    assert {k.split(".")[0] for k in load_file(str(tmp_path / "two" / "heads.safetensors"))} == {"text", "image"}
    assert {k.split(".")[0] for k in load_file(str(tmp_path / "one" / "heads.safetensors"))} == {"shared"}
    loaded = xbt.load_adapter(tmp_path / "two", new=old_new[1])
    assert loaded.heads["text"] is not loaded.heads["image"]
    with pytest.raises(XBTError, match="separate text and image heads"):
        _ = loaded.projection


def write_format_1(adapter, folder):
    """The folder 8ad766f's save_pretrained wrote: adapter_config.json + projection.safetensors (+ lora/)."""
    base = adapter.base if isinstance(adapter, FusionAdapter) else adapter

    def model(ref):  # format 1 recorded the encoder's label, backend, width and fingerprint
        return {"name": ref.label, "backend": ref.backend, "embed_dim": ref.embed_dim, "fingerprint": ref.fingerprint}

    config = {
        "format": "xbt-adapter",
        "format_version": 1,
        "xbt_version": "0.1.0",
        "method": base.method,
        "new_model": model(base.new_ref),
        "old_model": model(base.old_ref),
        "projection": base.projection.config(),
        "training": base.training,
        "lora": base.lora is not None,
    }
    if isinstance(adapter, FusionAdapter):
        config["fusion"] = {
            "kind": adapter.kind,
            "alpha_text": adapter.alpha_text,
            "alpha_image": adapter.alpha_image,
            "query_cost": adapter.query_cost,
            "base_method": base.method,
            "base_training": base.training,
            "base_class": "xbt.adapter:Adapter",
        }
        config.update(
            method=adapter.method,
            training=adapter.training,
            requires_old_encoder=True,
            load_with="xbt.baselines.FusionAdapter.from_pretrained(path, new=new, old=old)",
        )
    config["adapter_id"] = "0" * 24
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(
        {k: v.contiguous() for k, v in base.projection.state_dict().items()},
        str(folder / "projection.safetensors"),
        metadata={"format": "xbt-adapter"},
    )
    if base.lora is not None:
        base.lora.peft_model.save_pretrained(str(folder / "lora"))


@pytest.mark.parametrize("name", ["xbt stage 1", "xbt stage 1+2", "slerp"])
def test_folders_of_format_1_load_and_can_be_saved_over(adapters, name, old_new, pairs, tmp_path):
    old, new = old_new
    adapter = adapters[name]
    if adapter.heads["text"] is not adapter.heads["image"]:
        # Format 1 knew one head for both query paths and LoRA on both towers: such an adapter.
        adapter = xbt.Adapter(
            adapter.new,
            adapter.heads["image"],
            method=adapter.method,
            old=adapter.old_ref,
            training=adapter.training,
            lora=adapter.lora,
        )
    write_format_1(adapter, tmp_path / "v1")
    loaded = xbt.load_adapter(tmp_path / "v1", new=new, old=old)
    assert type(loaded) is type(adapter) and loaded.method == adapter.method
    assert loaded.new_ref.fingerprint == new.fingerprint and loaded.old_ref.embed_dim == 32
    assert_same_outputs(loaded, adapter, pairs, exact="1+2" not in name)
    loaded.save_pretrained(tmp_path / "v1")  # the same adapter: accepted, rewritten in format 2
    assert (tmp_path / "v1" / "xbt_config.json").is_file() and not (tmp_path / "v1" / "adapter_config.json").exists()
    assert_same_outputs(xbt.load_adapter(tmp_path / "v1", new=new, old=old), adapter, pairs, exact="1+2" not in name)


def test_a_format_from_the_future_is_refused(adapters, old_new, tmp_path):
    adapters["xbt stage 1"].save_pretrained(tmp_path / "a")
    path = tmp_path / "a" / "xbt_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": 3, "new_field": {}}))
    with pytest.raises(XBTError, match=r"format version 3, newer than this xbt .* reads \(up to 2\); upgrade xbt"):
        xbt.load_adapter(tmp_path / "a", new=old_new[1])
    with pytest.raises(XBTError, match="newer than this xbt"):  # and it is not taken for foreign files to overwrite
        adapters["xbt stage 1"].save_pretrained(tmp_path / "a")


def test_model_card_has_metadata_and_the_evaluation_table(adapters, old_new, tmp_path):
    old, new = old_new
    adapter = xbt.fit(
        old,
        new,
        xbt.toy.text_corpus(120),
        pairs=pair_list(40),
        epochs=1,
        stage2={"image_tower": "lora", "epochs": 1, "rank": 2, "val_fraction": 0.0},
        verbose=False,
    )
    images, captions = xbt.toy.test_split(12)
    report = xbt.evaluate(
        old,
        {"xbt": adapter, "slerp": adapters["slerp"]},
        dataset=RetrievalDataset(images, captions, "toy", "test"),
        cache=False,
        verbose=False,
        query_cost=False,
    )
    adapter.attach_report(report)  # two rows: the one whose method is "xbt"
    adapter.save_pretrained(tmp_path / "a", repo_id="org/xbt-tiny")
    card = ModelCard.load(tmp_path / "a" / "README.md")
    data = card.data
    assert data.library_name == "xbt" and {"xbt", "clip", "backward-compatible-training"} <= set(data.tags)
    assert (data.new_model, data.old_model, data.corpus_texts, data.pairs) == ("tiny-new", "tiny-old", 120, 40)
    assert data.base_model is None  # a local model has no Hub id
    results = {(r.dataset_name, r.metric_type, r.metric_name): r.metric_value for r in data.eval_results}
    recall = report.methods["xbt"].recall
    assert results[("toy (test)", "recall@1", "new→old R@1 T2I")] == round(100 * recall["t2i"][1], 2)
    assert len(results) == 6 and data.to_dict()["model-index"][0]["name"] == "org/xbt-tiny"
    assert "| new→old (this adapter) |" in card.text and "| old→old (the gallery's own model) |" in card.text
    assert "xbt.load_adapter('org/xbt-tiny', new=new)" in card.text
    # the evaluation travels with the folder but is not part of what the adapter is
    assert xbt.load_adapter(tmp_path / "a", new=new).evaluation == adapter.evaluation
    assert (
        adapter.adapter_id()
        == xbt.fit(
            old,
            new,
            xbt.toy.text_corpus(120),
            pairs=pair_list(40),
            epochs=1,
            stage2={"image_tower": "lora", "epochs": 1, "rank": 2, "val_fraction": 0.0},
            verbose=False,
        ).adapter_id()
    )


def test_fusion_card_says_the_old_model_runs_on_every_query(adapters, captions_400):
    card = adapters["slerp"].model_card("org/s")
    assert "xbt.load_adapter('org/s', new=new, old=old)" in card.text and "SLERP" in card.text
    assert card.data.eval_results is None and "model-index" not in card.data.to_dict()
    # the base map's (distinct) texts, the pairs its weights were chosen on
    assert (card.data.corpus_texts, card.data.pairs) == (len(set(captions_400[:150])), 40)


def test_base_model_is_the_new_models_hub_id():
    assert (
        hub_model_id(ModelRef("hf:openai/clip-vit-base-patch32", backend="transformers"))
        == "openai/clip-vit-base-patch32"
    )
    assert (
        hub_model_id(ModelRef("ViT-B-32", pretrained="openai", backend="open_clip"))
        == "timm/vit_base_patch32_clip_224.openai"
    )
    assert (
        hub_model_id(ModelRef("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", backend="open_clip"))
        == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    )
    for local in ("xbt-toy-new", "local-dir:/models/clip", "ViT-B-32"):
        assert hub_model_id(ModelRef(local, backend="open_clip")) is None


def test_load_by_repo_id_from_the_hub_cache_offline(adapters, old_new, pairs, tmp_path, monkeypatch):
    from huggingface_hub import constants

    old, new = old_new
    assert constants.HF_HUB_OFFLINE  # conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read once at import; the env var is what users set
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--org--tiny-adapter"
    adapters["xbt stage 1+2 + nlerp"].save_pretrained(repo / "snapshots" / commit, repo_id="org/tiny-adapter")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit / "pytorch_model.bin").write_bytes(b"\x80garbage: a pickle would be read here, never")
    loaded = xbt.load_adapter("org/tiny-adapter", new=new, old=old)
    assert isinstance(loaded, FusionAdapter) and loaded.base.lora is not None
    assert_same_outputs(loaded, adapters["xbt stage 1+2 + nlerp"], pairs, exact=False)
    with pytest.raises(XBTError, match="could not fetch adapter 'org/not-cached'.*HF_HUB_OFFLINE=1"):
        xbt.load_adapter("org/not-cached", new=new)


def test_downloads_ask_for_the_adapters_own_files_only(tmp_path, monkeypatch):
    import xbt.adapters.hub

    asked = {}

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        asked.update(repo=repo_id, revision=revision, patterns=allow_patterns)
        return str(tmp_path)

    monkeypatch.setattr(xbt.adapters.hub, "snapshot_download", fake_snapshot_download)
    assert xbt.adapters.hub.resolve("org/x", revision="v1") == tmp_path and asked["revision"] == "v1"

    def fetched(name):
        return any(fnmatch.fnmatch(name, p) for p in asked["patterns"])

    wanted = [
        "xbt_config.json",
        "heads.safetensors",
        "README.md",
        "lora/adapter_config.json",
        "lora/adapter_model.safetensors",
        "adapter_config.json",
        "projection.safetensors",
    ]
    assert all(fetched(n) for n in wanted)
    assert not any(
        fetched(n) for n in ["pytorch_model.bin", "lora/adapter_model.bin", "x.pkl", "model.pt", "notes.txt"]
    )


# the regressions this file guards (each failed on the code before its fix)


def test_a_model_with_other_weights_is_refused_unless_opted_out(stage1_adapter, old_new, tmp_path):
    """A model whose weights do not match only warned; now an error naming both fingerprints and the fix."""
    old, new = old_new
    stage1_adapter.save_pretrained(tmp_path / "a")
    other_new, other_old = tiny_open_clip(48, seed=10), tiny_open_clip(32, seed=11)
    with pytest.raises(
        XBTError,
        match=rf"new model given .*fingerprint \w+\).*fingerprint {new.fingerprint}\).*check_fingerprint=False",
    ):
        xbt.load_adapter(tmp_path / "a", new=other_new)
    with pytest.raises(XBTError, match=rf"old model given .*fingerprint {old.fingerprint}\)"):
        xbt.load_adapter(tmp_path / "a", new=new, old=other_old)
    loaded = xbt.load_adapter(tmp_path / "a", new=other_new, check_fingerprint=False)
    assert loaded.new_ref == stage1_adapter.new_ref  # it still describes the model it was trained for
    with pytest.raises(XBTError, match="old model given"):
        xbt.fuse(stage1_adapter, other_old, alpha=0.5)
    assert xbt.fuse(stage1_adapter, other_old, alpha=0.5, check_fingerprint=False).alpha_text == 0.5


def test_resaving_after_an_xbt_upgrade_is_allowed(stage1_adapter, tmp_path):
    """``adapter_id`` included the xbt version, so re-saving the same adapter after an upgrade was refused."""
    stage1_adapter.save_pretrained(tmp_path / "a")
    path = tmp_path / "a" / "xbt_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "xbt_version": "0.0.1"}))  # as an older xbt wrote it
    stage1_adapter.save_pretrained(tmp_path / "a")  # same adapter: accepted, and rewritten by this version
    assert json.loads(path.read_text())["xbt_version"] == xbt.__version__
    assert stage1_adapter.config().replace(xbt_version="9.9.9").content() == stage1_adapter.config().content()
