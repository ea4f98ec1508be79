"""Stage 2 on tiny random models: two query paths, the guard, old vectors, LoRA on ViT/ResNet/transformers, resume."""

import importlib
import json
import math

import open_clip
import pytest
import torch

import xbt
from xbt import XBTError
from xbt.core.files import dumps_json
from xbt.models.encoders import as_encoder
from xbt.toy import pair_list

from .conftest import fit_briefly

fit_module = importlib.import_module("xbt.method.fit")  # the module, not the function xbt.fit


@pytest.fixture(scope="module")
def pairs_40():
    return pair_list(40)


def _fit2(old, new, texts, pairs, **kw):
    # No held-out split by default: on 40 pairs of random tiny models the guard would judge on 4
    # pairs of noise and may keep stage 1, which would leave nothing to test. The guard has its own tests.
    # LoRA on the image tower: most tests here are about it (the frozen tower: test_image_head.py)
    stage2 = {
        "image_tower": "lora",
        "epochs": 3,
        "batch_size": 8,
        "text_epochs": 2,
        "val_fraction": 0.0,
        **kw.pop("stage2", {}),
    }
    return xbt.fit(old, new, texts, pairs=pairs, epochs=2, stage2=stage2, verbose=False, **kw)


def tiny_resnet_clip(embed_dim: int, seed: int):
    """A random open_clip CLIP whose image tower is a ModifiedResNet (convolutions, batch norm, attention pool)."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=embed_dim,
        vision_cfg={"image_size": 32, "layers": (1, 1, 1, 1), "width": 8, "head_width": 8},
        text_cfg={"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )
    return model.eval()


def test_base_weights_bit_identical_and_each_path_trained(old_new, captions_400, pairs_40):
    old, new = old_new
    before = {k: v.clone() for k, v in new.model.state_dict().items()}
    probe = captions_400[300:305]
    bare_before = new.encode_text(probe)
    images = [p[0] for p in pairs_40[:5]]
    bare_images = new.encode_image(images)
    adapter = _fit2(old, new, captions_400[:100], pairs_40)
    after = new.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(new.encode_text(probe), bare_before)  # the user's model still gives new->new
    assert adapter.lora is not None and adapter.lora.model is not new.model
    assert adapter.lora_modalities == ("image",) and adapter.query_encoders["text"] is new
    assert not torch.allclose(adapter.lora.encode_image(images), bare_images, atol=1e-4)  # LoRA moved image queries
    assert torch.equal(adapter.lora.encode_text(probe), bare_before)  # the LoRA copy's text tower is untouched
    # two heads: the text head was distilled away from stage 1, the image head trained with LoRA
    stage1 = xbt.fit(old, new, captions_400[:100], epochs=2, verbose=False)
    new_txt = new.encode_text(probe)
    assert not torch.allclose(adapter.heads["text"](new_txt), stage1.projection(new_txt), atol=1e-4)
    assert adapter.heads["text"] is not adapter.heads["image"]


def test_fit_embeds_the_pairs_with_the_old_model_unless_given_or_off(old_new, captions_400, pairs_40, capsys):
    old, new = old_new
    images = [p[0] for p in pairs_40]
    default = xbt.fit(
        old,
        new,
        captions_400[:100],
        pairs=pairs_40,
        epochs=1,
        stage2={"epochs": 1, "text_epochs": 1, "val_fraction": 0.0},
        verbose=True,
    )
    assert default.training["pair_old_vectors"] == {
        "images": "embedded with the old model",
        "captions": "embedded with the old model",
    }
    assert "OLD vectors of the 40 pair images: embedded with the old model" in capsys.readouterr().out
    stored = old.encode_image(images)
    given = _fit2(old, new, captions_400[:100], pairs_40, old_image_embeddings=stored)
    assert given.training["pair_old_vectors"]["images"] == "given"
    embedded = _fit2(old, new, captions_400[:100], pairs_40)
    probe = captions_400[300:305]
    assert torch.allclose(
        given.encode_text(probe), embedded.encode_text(probe), atol=1e-6
    )  # same vectors, same adapter
    assert torch.allclose(given.encode_image(images[:4]), embedded.encode_image(images[:4]), atol=1e-6)
    off = _fit2(old, new, captions_400[:100], pairs_40, embed_pairs_with_old=False)
    assert off.training["pair_old_vectors"] == {"images": "none", "captions": "none"}
    assert "not trained" in off.training["kept"]["text"]["reason"] and off.heads["text"] is not off.heads["image"]
    with pytest.raises(XBTError, match=r"old_image_embeddings must be \[40, 32\]"):
        _fit2(old, new, captions_400[:100], pairs_40, old_image_embeddings=stored[:10])
    no_stage1 = _fit2(old, new, captions_400[:100], pairs_40, use_stage1=False)
    assert "stage1" not in no_stage1.training
    with pytest.raises(XBTError, match="nothing that knows the old space"):
        _fit2(old, new, captions_400[:100], pairs_40, use_stage1=False, embed_pairs_with_old=False)


@pytest.fixture(scope="module")
def toy_clips():
    return xbt.toy.load_clips(device="cpu")


def test_the_guard_keeps_stage1_for_a_path_that_got_worse(toy_clips, captions_400, pairs_40):
    old, new = toy_clips  # trained models: their stage 1 is worth keeping, unlike random ones'
    stage1 = xbt.fit(old, new, captions_400, epochs=2, verbose=False)
    # An absurd learning rate wrecks both paths; the held-out pairs see it and each path keeps stage 1.
    wrecked = {"lr": 50.0, "projection_lr": 50.0, "text_lr": 50.0, "val_fraction": 0.5}
    guarded = _fit2(old, new, captions_400, pairs_40, stage2=wrecked)
    assert guarded.training["kept"]["image"]["kept"] == "stage 1" and guarded.lora is None
    assert guarded.training["kept"]["text"]["kept"] == "stage 1"
    probe = captions_400[300:304]
    assert torch.allclose(guarded.encode_text(probe), stage1.encode_text(probe), atol=1e-6)
    assert torch.allclose(
        guarded.encode_image([p[0] for p in pairs_40[:4]]),
        stage1.encode_image([p[0] for p in pairs_40[:4]]),
        atol=1e-6,
    )
    record = guarded.training["metrics"]["stage2"]["image"]["choice"]
    assert all(v > record["scores"]["stage 1"] for k, v in record["scores"].items() if k != "stage 1")
    assert "kept stage 1" in guarded.model_card().text  # the card says what was kept and why
    # Without the guard the same run keeps its last (wrecked) epoch before the loss turned non-finite.
    blind = _fit2(old, new, captions_400, pairs_40, stage2={**wrecked, "guard": False})
    diverged = blind.training["metrics"]["stage2"]["image"]["history"]["diverged_at_epoch"]
    assert blind.lora is not None and blind.training["kept"]["image"]["kept"] == f"stage 2 (epoch {diverged - 1})"


def test_lora_on_a_resnet_image_tower_leaves_batch_norm_alone(captions_400, pairs_40):
    from xbt.models.lora import lora_parameter_count, lora_targets

    from .conftest import tiny_open_clip

    old = as_encoder(tiny_open_clip(32, seed=1))
    new = as_encoder(tiny_resnet_clip(40, seed=5))
    targets = lora_targets(new, ("image",))
    assert "visual.layer4.0.conv3" in targets
    assert not [t for t in targets if "attnpool" in t]  # its weights go to F.multi_head_attention_forward directly
    bn_before = new.model.visual.layer1[0].bn1.running_mean.clone()
    adapter = _fit2(old, new, captions_400[:100], pairs_40)
    assert lora_parameter_count(adapter.lora) > 0
    # training ran with the base in eval mode: the LoRA copy's batch-norm statistics are the base's
    assert torch.equal(adapter.lora.model.visual.layer1[0].bn1.running_mean, bn_before)
    images = [p[0] for p in pairs_40[:4]]
    merged = xbt.load_adapter(_saved(adapter), new=new)
    assert torch.allclose(merged.encode_image(images), adapter.encode_image(images), atol=1e-5)


def _saved(adapter, _n=None):
    import tempfile
    from pathlib import Path

    if _n is None:
        _n = [0]
    _n[0] += 1
    return adapter.save_pretrained(Path(tempfile.mkdtemp()) / f"a{_n[0]}")


def test_a_tower_without_target_layers_is_an_error(old_new):
    from xbt.models.lora import lora_targets

    _, new = old_new
    with pytest.raises(XBTError, match="no LoRA target layer found in the image tower"):
        lora_targets(new, ("image",), suffixes=("no_such_layer",))


def test_pairs_as_dataset_and_as_tuples_give_the_same_adapter(old_new, captions_400, pairs_40):
    import datasets

    old, new = old_new
    ds = datasets.Dataset.from_dict(
        {"image": [p[0] for p in pairs_40], "caption": [p[1] for p in pairs_40]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )
    assert (
        _fit2(old, new, captions_400[:100], pairs_40).adapter_id()
        == _fit2(old, new, captions_400[:100], ds).adapter_id()
    )


def test_save_load_round_trip_with_lora_and_two_heads(old_new, captions_400, pairs_40, tmp_path):
    old, new = old_new
    adapter = _fit2(old, new, captions_400[:100], pairs_40)
    adapter.save_pretrained(tmp_path / "a")
    assert (tmp_path / "a" / "lora" / "adapter_model.safetensors").is_file()
    loaded = xbt.load_adapter(tmp_path / "a", new=new)
    images = [p[0] for p in pairs_40[:4]]
    assert torch.allclose(loaded.encode_image(images), adapter.encode_image(images), atol=1e-6)
    assert torch.allclose(loaded.encode_text(captions_400[:6]), adapter.encode_text(captions_400[:6]), atol=1e-6)
    assert loaded.adapter_id() == adapter.adapter_id() and loaded.lora_modalities == ("image",)
    stored = sum(p.stat().st_size for p in (tmp_path / "a").rglob("*.safetensors"))
    model_bytes = sum(v.numel() * v.element_size() for v in new.model.state_dict().values())
    assert stored < model_bytes / 5  # only LoRA and the heads are stored, not the new model


def test_merged_equals_unmerged(old_new, captions_400, pairs_40):
    old, new = old_new
    adapter = _fit2(old, new, captions_400[:100], pairs_40, stage2={"rank": 4})
    images, texts = [p[0] for p in pairs_40[:6]], captions_400[200:210]
    t0, i0 = adapter.encode_text(texts), adapter.encode_image(images)
    adapter.merge()
    assert adapter.merged and not any(hasattr(enc, "peft_model") for enc in adapter.query_encoders.values())
    assert torch.allclose(adapter.encode_text(texts), t0, atol=1e-5)
    assert torch.allclose(adapter.encode_image(images), i0, atol=1e-5)


def test_resume_after_interruption_matches_uninterrupted_run(old_new, captions_400, pairs_40, tmp_path, monkeypatch):
    old, new = old_new
    stage2 = {"epochs": 4, "patience": 10, "val_fraction": 0.5}
    full = _fit2(old, new, captions_400[:100], pairs_40, stage2=stage2)

    class Interrupt(Exception):
        pass

    def stop_after_two(epoch, history):
        if epoch == 2:
            raise Interrupt

    original = fit_module.train_stage2
    with monkeypatch.context() as patch:
        patch.setattr(fit_module, "train_stage2", lambda *a, **k: original(*a, on_epoch_end=stop_after_two, **k))
        with pytest.raises(Interrupt):
            _fit2(old, new, captions_400[:100], pairs_40, stage2=stage2, checkpoint_dir=tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "stage2_checkpoint.safetensors").is_file()
    resumed = _fit2(old, new, captions_400[:100], pairs_40, stage2=stage2, checkpoint_dir=tmp_path / "ckpt")
    record = resumed.training["metrics"]["stage2"]["image"]
    assert record["history"]["resumed_from_epoch"] == 2
    assert record["choice"] == full.training["metrics"]["stage2"]["image"]["choice"]
    images = [p[0] for p in pairs_40[:5]]
    assert torch.allclose(resumed.encode_image(images), full.encode_image(images), atol=1e-6)


def test_checkpoint_of_another_run_is_refused(old_new, captions_400, pairs_40, tmp_path):
    old, new = old_new
    _fit2(old, new, captions_400[:100], pairs_40, checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(XBTError, match="different run"):
        _fit2(old, new, captions_400[:100], pairs_40, stage2={"rank": 2}, checkpoint_dir=tmp_path / "ckpt")


def test_transformers_clip_stage2(captions_400, pairs_40):
    from xbt.models.lora import lora_parameter_count

    from .conftest import tiny_hf_clip

    old, new = as_encoder(tiny_hf_clip(32, seed=3)), as_encoder(tiny_hf_clip(40, seed=4))
    adapter = _fit2(old, new, captions_400[:100], pairs_40)
    assert adapter.encode_image([p[0] for p in pairs_40[:3]]).shape == (3, 32)
    assert lora_parameter_count(adapter.lora) > 0


def test_bad_pairs(old_new, captions_400):
    old, new = old_new
    with pytest.raises(XBTError, match="pairs is empty"):
        xbt.fit(old, new, captions_400[:50], pairs=[], verbose=False)
    with pytest.raises(XBTError, match=r"pairs\[0\] image is a str"):
        xbt.fit(old, new, captions_400[:50], pairs=[("not an image", "a caption")], verbose=False)
    with pytest.raises(XBTError, match="unknown stage-2 option"):
        xbt.fit(old, new, captions_400[:50], pairs=pair_list(4), stage2={"rnk": 4}, verbose=False)
    with pytest.raises(XBTError, match="caption_bank must be 'stage1' or 'old'"):
        xbt.Stage2Config(image_tower="lora", caption_bank="gallery")


def test_bf16_autocast_path_trains_on_cpu(old_new, captions_400, pairs_40):
    old, new = old_new
    adapter = _fit2(old, new, captions_400[:100], pairs_40, stage2={"precision": "bf16", "epochs": 1})
    history = adapter.training["metrics"]["stage2"]["image"]["history"]
    assert history["precision"] == "bf16" and all(torch.isfinite(torch.tensor(history["train_loss"])))
    out = adapter.encode_image([p[0] for p in pairs_40[:3]])
    assert out.dtype == torch.float32 and torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_confidence_weighting_changes_what_stage2_learns(old_new, captions_400, pairs_40):
    old, new = old_new
    weighted = _fit2(old, new, captions_400[:100], pairs_40)
    uniform = _fit2(old, new, captions_400[:100], pairs_40, stage2={"confidence_weighting": False})
    images = [p[0] for p in pairs_40[:6]]
    assert not torch.allclose(weighted.encode_image(images), uniform.encode_image(images), atol=1e-5)
    with pytest.raises(XBTError, match="confidence_temperature must be positive"):
        _fit2(old, new, captions_400[:100], pairs_40, stage2={"confidence_temperature": 0.0})


def test_caption_bank_and_distractors_leave_the_pair_captions_out(old_new, captions_400, pairs_40):
    old, new = old_new
    texts = captions_400[:100] + [pairs_40[0][1]]  # one pair caption among the stage-1 texts
    free = len(set(texts) - {c for _, c in pairs_40})
    distractors = free // 5  # a fifth of the free texts (at most 5,000) is kept out for the held-out search
    bank = lambda a: a.training["metrics"]["stage2"]["image"]["history"]["caption_bank"]  # noqa: E731
    assert bank(_fit2(old, new, texts, pairs_40)) == len(pairs_40) + free - distractors
    assert bank(_fit2(old, new, texts, pairs_40, stage2={"caption_bank_size": 30})) == len(pairs_40) + 30
    assert bank(_fit2(old, new, texts, pairs_40, stage2={"caption_bank_size": 0})) == len(pairs_40)
    old_bank = _fit2(old, new, texts, pairs_40, stage2={"caption_bank": "old"})
    assert old_bank.training["metrics"]["stage2"]["image"]["history"]["caption_bank_kind"] == "old"
    with pytest.raises(XBTError, match=r"\['caption_bank_size'\] only apply to image_tower='lora'"):
        xbt.Stage2Config(caption_bank_size=30)  # a LoRA option, refused for the frozen tower
    with pytest.raises(XBTError, match="caption_bank_size must be >= 0"):
        xbt.Stage2Config(
            image_tower="lora", caption_bank_size=-1
        )  # validated on construction, not only through from_kwargs


def test_pair_confidence_is_the_softmax_diagonal_in_chunks_and_favours_specific_captions():
    from xbt.method.losses import pair_confidence

    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(50, 16, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.3 * torch.randn(50, 16, generator=gen), dim=-1)
    reference = torch.softmax(img @ txt.T / 0.05, dim=-1).diagonal()
    assert torch.allclose(pair_confidence(img, txt, 0.05), reference, atol=1e-6)
    assert torch.allclose(pair_confidence(img, txt, 0.05, chunk=7), reference, atol=1e-6)  # chunk boundaries
    # A vague caption, the same text for ten images: each of those pairs is less sure than the
    # pairs whose caption singles out its image.
    vague = txt.clone()
    vague[:10] = torch.nn.functional.normalize(img[:10].mean(0), dim=-1)
    conf = pair_confidence(img, vague, 0.05)
    assert conf[:10].max() < conf[10:].median()


def test_ranking_distillation_is_the_kl_from_the_teachers_ranking_and_zero_when_they_agree():
    from xbt.method.losses import ranking_distillation

    gen = torch.Generator().manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=gen), dim=-1)  # noqa: E731
    q_t, g_t, g_s = unit(8, 12), unit(30, 12), unit(30, 6)
    q_s = unit(8, 6).requires_grad_(True)
    p = torch.softmax(q_t @ g_t.T / 0.02, dim=1)
    log_q = torch.log_softmax(q_s @ g_s.T / 0.05, dim=1)
    reference = (p * (p.log() - log_q)).sum(1).mean()
    loss = ranking_distillation(q_s, g_s, 0.05, q_t, g_t, 0.02)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    loss.backward()
    assert q_s.grad is not None and q_s.grad.abs().sum() > 0
    # a student that ranks the gallery exactly as the teacher does has nothing to learn
    assert ranking_distillation(q_t, g_t, 0.02, q_t, g_t, 0.02).item() == pytest.approx(0.0, abs=1e-6)


def test_logit_scale_is_read_from_the_model(old_new):
    from xbt.models.encoders import CLIPEncoder

    _, new = old_new
    assert new.logit_scale == pytest.approx(new.model.logit_scale.exp().item())

    class NoScale(torch.nn.Module):
        pass

    assert CLIPEncoder(NoScale(), None, None, "bare", "open_clip").logit_scale == 100.0


def test_a_stage1_adapter_can_serve_several_stage2_runs(old_new, captions_400, pairs_40):
    old, new = old_new
    first = _fit2(old, new, captions_400[:100], pairs_40)
    stage1 = xbt.fit(old, new, captions_400[:100], epochs=2, verbose=False)
    reused = xbt.fit(
        old,
        new,
        captions_400[:100],
        pairs=pairs_40,
        stage1=stage1,
        verbose=False,
        stage2={"image_tower": "lora", "epochs": 3, "batch_size": 8, "text_epochs": 2, "val_fraction": 0.0},
    )
    assert reused.adapter_id() == first.adapter_id()  # the same as training stage 1 anew with the same seed
    with pytest.raises(XBTError, match="drop .'epochs'."):
        xbt.fit(old, new, captions_400[:100], pairs=pairs_40, stage1=stage1, epochs=3, verbose=False)
    with pytest.raises(XBTError, match="adapter of a text-only fit"):
        xbt.fit(old, new, captions_400[:100], pairs=pairs_40, stage1=first, verbose=False)
    with pytest.raises(XBTError, match="another new model"):
        xbt.fit(
            old,
            as_encoder(tiny_resnet_clip(48, seed=9)),
            captions_400[:100],
            pairs=pairs_40,
            stage1=stage1,
            verbose=False,
        )


def test_each_kept_path_is_checked_against_the_old_models_own_queries(toy_clips, captions_400, pairs_40):
    import numpy as np

    from xbt.adapters.config import ModelRef
    from xbt.evaluation.search import search
    from xbt.gallery.mixed import MixedGallery
    from xbt.method.guard import geometric_mean_rank, t2i_ranks
    from xbt.models.embedding import embed_images, embed_texts

    old, new = toy_clips
    wrecked = {
        "image_tower": "lora",
        "lr": 50.0,
        "projection_lr": 50.0,
        "text_lr": 50.0,
        "val_fraction": 0.5,
        "epochs": 1,
        "text_epochs": 1,
    }
    with pytest.warns(UserWarning, match="not backward compatible"):
        # one stage-1 epoch on 400 captions: far from the old model, which the held-out pairs must say
        adapter = xbt.fit(old, new, captions_400, pairs=pairs_40, epochs=1, stage2=wrecked, verbose=False)
    versus = adapter.training["metrics"]["stage2"]["versus_old_model"]
    assert set(versus) == {"text", "image"}
    for r in versus.values():
        assert r["n"] == 20 and r["backward_compatible"] == (r["adapter"] <= r["old_model"])
        assert r["verdict"] == (
            "better"
            if r["mean_log_rank_gain"] > r["standard_error"]
            else "worse"
            if r["mean_log_rank_gain"] < -r["standard_error"]
            else "within noise"
        )
    assert "worse" in (versus["text"]["verdict"], versus["image"]["verdict"])  # what the warning was about
    # the old model's score is its own search of the same held-out pairs (the split stage 2 draws with its seed)
    val = torch.randperm(40, generator=torch.Generator().manual_seed(xbt.Stage2Config().seed))[:20]
    images, captions = [pairs_40[i][0] for i in val], [pairs_40[i][1] for i in val]
    expect = geometric_mean_rank(
        t2i_ranks(embed_texts(old, captions, verbose=False), embed_images(old, images, verbose=False))
    )
    assert versus["text"]["old_model"] == pytest.approx(expect, rel=1e-4)
    card = adapter.model_card().text
    assert "Against the old model's own queries" in card and "**Not backward compatible here**" in card
    worse = "text" if versus["text"]["verdict"] == "worse" else "image"
    assert adapter.verdicts()[worse].verdict == "not backward compatible"
    assert adapter.verdicts()[worse].sentence() in card
    # a gallery in migration then searches its old part with the old model's own queries: old->old, not below it
    modality = "image" if worse == "text" else "text"
    items = [im for im, _ in pairs_40[:20]] if modality == "image" else [c for _, c in pairs_40[:20]]
    old_vectors = (embed_images if modality == "image" else embed_texts)(old, items, verbose=False)
    gallery = MixedGallery(ModelRef.of(old), new.embed_dim, modality)
    gallery.add_old(old_vectors)
    assert "not backward compatible" in gallery.use_old_queries(adapter) and gallery.old_queries == "old model"
    queries = [c for _, c in pairs_40[20:25]] if worse == "text" else [im for im, _ in pairs_40[20:25]]
    with pytest.raises(xbt.XBTError, match="pass old="):
        gallery.search_with(adapter, queries, k=3)
    _, ids = gallery.search_with(adapter, queries, k=3, old=old)
    old_queries = (embed_texts if worse == "text" else embed_images)(old, queries, verbose=False)
    np.testing.assert_array_equal(ids, search(old_queries.numpy(), old_vectors.numpy(), 3)[1])
    with pytest.warns(UserWarning, match="forced|rank below what the old model gave"):
        gallery.use_old_queries(adapter, force="adapter")
    assert gallery.old_queries == "adapter" and "forced against its verdict" in gallery.old_queries_reason


def test_few_held_out_pairs_choose_the_text_head_on_folds_of_all_pairs(toy_clips, captions_400, pairs_40, tmp_path):
    old, new = toy_clips
    # 40 pairs, 20 % held out: 8 pairs, under 200, so 5 folds (the held-out split and four more)
    adapter = xbt.fit(
        old,
        new,
        captions_400,
        pairs=pairs_40,
        epochs=1,
        stage2={"epochs": 1, "text_epochs": 2, "val_fraction": 0.2, "distill_texts": 200},
        verbose=False,
    )
    text = adapter.training["metrics"]["stage2"]["text"]
    assert text["folds"] == 5 and "pooled over 5 folds" in text["choice"]["measure"]
    history = text["history"]
    assert len(history["other_folds"]) == 4 and all(len(f) == 3 for f in history["other_folds"])  # stage 1 + 2 epochs
    # every state's score is the geometric mean of its own held-out score and the other folds'
    for epoch, own in enumerate(history["own_geo_mean_rank"]):
        folds = [own] + [f[epoch] for f in history["other_folds"]]
        assert history["val_geo_mean_rank"][epoch] == pytest.approx(
            float(torch.tensor(folds, dtype=torch.float64).log().mean().exp()), rel=1e-9
        )
    # a state replaces stage 1 only with a clear paired gain; among those, the best pooled score wins
    scores, clear = text["choice"]["scores"], history["clear_gain"]
    assert len(clear) == 2 and "one standard error" in text["choice"]["measure"]
    eligible = ["stage 1"] + [f"stage 2 (epoch {e})" for e in (1, 2) if clear[e - 1]]
    assert text["choice"]["chosen"] == min(eligible, key=lambda k: (scores[k], k != "stage 1"))
    # the record (folds, verdicts) survives the adapter folder as JSON
    adapter.save_pretrained(tmp_path / "folded")
    loaded = xbt.load_adapter(tmp_path / "folded", new=new, old=old)
    assert loaded.training["metrics"]["stage2"]["text"]["history"]["clear_gain"] == history["clear_gain"]
    assert (
        loaded.training["metrics"]["stage2"]["versus_old_model"]
        == adapter.training["metrics"]["stage2"]["versus_old_model"]
    )
    # one fold (the held-out split alone) when asked; folds without the guard are refused
    single = xbt.fit(
        old,
        new,
        captions_400,
        pairs=pairs_40,
        epochs=1,
        verbose=False,
        stage2={"epochs": 1, "text_epochs": 2, "val_fraction": 0.2, "distill_texts": 200, "text_folds": 1},
    )
    assert single.training["metrics"]["stage2"]["text"]["folds"] == 1
    assert "other_folds" not in single.training["metrics"]["stage2"]["text"]["history"]
    with pytest.raises(XBTError, match="text_folds"):
        xbt.Stage2Config(text_folds=3, guard=False)


# the regressions this file guards (each failed on the code before its fix)


def test_resuming_with_other_pairs_of_the_same_count_is_refused(old_new, captions_400, tmp_path):
    """The checkpoint key hashed the config and the pair *count*: other pairs silently resumed stale weights."""
    old, new = old_new
    pairs = pair_list(80)
    fit_briefly(old, new, captions_400[:60], pairs[:40], checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(XBTError, match="different run .*training data"):
        fit_briefly(old, new, captions_400[:60], pairs[40:], checkpoint_dir=tmp_path / "ckpt")
    changed = [(im, c + " again") for im, c in pairs[:40]]  # same images, other captions
    with pytest.raises(XBTError, match="different run"):
        fit_briefly(old, new, captions_400[:60], changed, checkpoint_dir=tmp_path / "ckpt")
    other_vectors = old.encode_image([im for im, _ in pairs[40:]])  # other OLD vectors for the same pairs
    with pytest.raises(XBTError, match="different run"):
        fit_briefly(
            old,
            new,
            captions_400[:60],
            pairs[:40],
            old_image_embeddings=other_vectors,
            checkpoint_dir=tmp_path / "ckpt",
        )


def test_no_validation_split_writes_null_not_nan(old_new, captions_400, tmp_path):
    """Without a validation split stage 2 wrote NaN into the adapter's JSON, which strict readers refuse."""
    old, new = old_new
    adapter = fit_briefly(old, new, captions_400[:60], pair_list(12))  # under 20 pairs: nothing held out
    adapter.save_pretrained(tmp_path / "a")

    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    config = json.loads((tmp_path / "a" / "xbt_config.json").read_text(), parse_constant=refuse)
    record = config["training"]["metrics"]["stage2"]
    assert record["n_val"] == 0 and record["image"]["choice"] is None
    epochs = config["training"]["stage2"]["epochs"]
    assert record["image"]["history"]["val_geo_mean_rank"] == [None] * (
        epochs + 1
    )  # the start and each epoch: nothing to score
    # the one JSON writer turns any other non-finite number into null too
    assert json.loads(dumps_json({"x": [1.0, math.inf, math.nan]}), parse_constant=refuse) == {"x": [1.0, None, None]}


def test_same_seed_still_gives_the_same_stage2_adapter(old_new, captions_400):
    """The seed alone decides the weights: the caller's RNG state does not leak in."""
    old, new = old_new
    torch.manual_seed(1)
    a = fit_briefly(old, new, captions_400[:60], pair_list(12))
    torch.manual_seed(2)
    b = fit_briefly(old, new, captions_400[:60], pair_list(12))
    assert a.adapter_id() == b.adapter_id()


def test_every_lora_layer_of_a_resnet_tower_is_on_the_image_path():
    """A wrapped layer whose forward never runs trains nothing (open_clip's attention pool reads its weights
    directly): every LoRA weight of the patterns world's ModifiedResNet gets a gradient from the image output."""
    from xbt.models.lora import add_lora, frozen_train_mode

    _, new = xbt.toy.get_world("patterns").load_clips()
    enc = add_lora(new, 4, 8.0)
    frozen_train_mode(enc)
    pixels = enc.preprocess_images(xbt.toy.test_split(2)[0])
    out = enc.image_features(pixels)
    (out * torch.randn_like(out)).sum().backward()
    grads = {n: p.grad for n, p in enc.model.named_parameters() if "lora_B" in n}
    assert grads and all(g is not None and g.abs().max() > 0 for g in grads.values())


def test_the_text_head_learns_from_the_pair_captions_where_the_teacher_knows_nothing():
    """Captions whose NEW vectors hold their image's OLD vector (a fixed linear map), a teacher that ranks
    nothing (random NEW image vectors): only the pair captions' own search can teach the head which image each
    held-out caption names."""
    from xbt.method.config import TEXT_PAIR_TEMPERATURE_FACTOR, Stage2Config
    from xbt.method.heads import distill_text_head
    from xbt.method.losses import spread_temperature
    from xbt.models.head import Projection

    gen = torch.Generator().manual_seed(0)
    unit = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
    d_new, d_old, n = 24, 16, 300
    mix = torch.randn(d_old, d_new, generator=gen)
    old_img = unit(torch.randn(n, d_old, generator=gen))
    captions = unit(old_img @ mix + 0.3 * torch.randn(n, d_new, generator=gen))  # one caption per image
    corpus = unit(torch.randn(2000, d_new, generator=gen))
    teacher_images = unit(torch.randn(240, d_new, generator=gen))
    stage1 = Projection(d_new, d_old, hidden=64)
    train, val = torch.arange(240), torch.arange(240, n)
    cfg = dict(text_epochs=4, text_batch_size=128, guard=False, seed=0)
    ranks = {}
    for weight in (0.0, 1.0):
        head, _, history = distill_text_head(
            stage1,
            corpus,
            teacher_images,
            old_img[train],
            0.05,
            Stage2Config(text_pair_weight=weight, **cfg),
            val_texts_new=captions[val],
            val_images_old=old_img[val],
            verbose=False,
            pair_texts_new=captions[train],
            pair_owner=torch.arange(240),
        )
        ranks[weight] = history["val_geo_mean_rank"][-1]
    assert history["pair_temperature"] == pytest.approx(
        spread_temperature(old_img[train], TEXT_PAIR_TEMPERATURE_FACTOR)
    )
    assert ranks[1.0] < 0.5 * ranks[0.0], ranks  # 60 held-out images: found far better with the pair captions
    with pytest.raises(XBTError, match="pair_owner must give one image row per pair caption"):
        distill_text_head(
            stage1,
            corpus,
            teacher_images,
            old_img[train],
            0.05,
            Stage2Config(**cfg),
            verbose=False,
            pair_texts_new=captions[train],
            pair_owner=torch.arange(10),
        )
    with pytest.raises(XBTError, match="text_pair_weight must be >= 0"):
        Stage2Config(text_pair_weight=-1.0)


def test_the_distillation_temperature_follows_the_spread_of_the_old_image_vectors():
    """Unset, the student's temperature is DISTILL_TEMPERATURE_FACTOR x the spread of the OLD image vectors'
    cosines: the head trained so equals the one given that value explicitly, and differs from a fixed 0.05."""
    from xbt.method.config import DISTILL_TEMPERATURE_FACTOR, Stage2Config
    from xbt.method.heads import distill_text_head
    from xbt.method.losses import spread_temperature
    from xbt.models.head import Projection

    gen = torch.Generator().manual_seed(1)
    unit = lambda x: torch.nn.functional.normalize(x, dim=-1)  # noqa: E731
    old_img = unit(torch.randn(200, 16, generator=gen) + 2.0)  # packed close: a small spread, a sharp softmax
    new_img, corpus = unit(torch.randn(200, 24, generator=gen)), unit(torch.randn(600, 24, generator=gen))
    derived = spread_temperature(old_img, DISTILL_TEMPERATURE_FACTOR)
    assert 0 < derived < 0.02
    heads, stage1 = {}, Projection(24, 16, hidden=32)
    for t in (None, derived, 0.05):
        cfg = Stage2Config(text_epochs=1, text_batch_size=128, guard=False, seed=0, distill_temperature=t)
        head, _, history = distill_text_head(stage1, corpus, new_img, old_img, 0.05, cfg, verbose=False)
        heads[t] = torch.cat([p.flatten() for p in head.parameters()])
        assert history["distill_temperature"] == pytest.approx(t or derived)
    assert torch.equal(heads[None], heads[derived]) and not torch.allclose(heads[None], heads[0.05])
    with pytest.raises(XBTError, match="distill_temperature None or > 0"):
        Stage2Config(distill_temperature=0.0)
