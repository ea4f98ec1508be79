"""Stage 2 on tiny random models: base weights untouched, LoRA save/load, merge, resume."""

import pytest
import torch

import xbt
from xbt import XBTError
from xbt.toy import pair_list


@pytest.fixture(scope="module")
def pairs_40():
    return pair_list(40)


def _fit2(old, new, texts, pairs, **kw):
    # No held-out split: on 40 pairs of random tiny models, early stopping on 4 validation pairs
    # is noise and may restore the untrained start, which would leave nothing to test.
    stage2 = {"epochs": 3, "batch_size": 8, "val_fraction": 0.0, **kw.pop("stage2", {})}
    return xbt.fit(old, new, texts, pairs=pairs, epochs=2, stage2=stage2, verbose=False, **kw)


def test_base_weights_bit_identical_and_new_new_available(old_new, captions_400, pairs_40):
    old, new = old_new
    before = {k: v.clone() for k, v in new.model.state_dict().items()}
    probe = captions_400[300:305]
    bare_before = new.encode_text(probe)
    images = [p[0] for p in pairs_40[:5]]
    bare_images = new.encode_image(images)
    adapter = _fit2(old, new, captions_400[:100], pairs_40)
    after = new.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(new.encode_text(probe), bare_before)  # the user's model still gives new->new
    assert adapter.lora is not None and adapter.lora.model is not new.model
    # LoRA actually changed the image query path (the image->caption ranking trains it; without
    # old gallery vectors the text side is only held at its stage-1 value)
    assert not torch.allclose(adapter.lora.encode_image(images), bare_images, atol=1e-4)


def test_pairs_as_dataset_and_as_tuples_give_the_same_adapter(old_new, captions_400, pairs_40):
    import datasets

    old, new = old_new
    ds = datasets.Dataset.from_dict({"image": [p[0] for p in pairs_40], "caption": [p[1] for p in pairs_40]},
                                    features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}))
    a = _fit2(old, new, captions_400[:100], pairs_40)
    b = _fit2(old, new, captions_400[:100], ds)
    assert a.adapter_id() == b.adapter_id()


def test_save_load_round_trip_with_lora(old_new, captions_400, pairs_40, tmp_path):
    old, new = old_new
    adapter = _fit2(old, new, captions_400[:100], pairs_40)
    adapter.save_pretrained(tmp_path / "a")
    assert (tmp_path / "a" / "lora" / "adapter_model.safetensors").is_file()
    loaded = xbt.load_adapter(tmp_path / "a", new=new)
    images = [p[0] for p in pairs_40[:4]]
    # PEFT re-injects the saved LoRA tensors exactly; float summation order can differ by an ulp
    assert torch.allclose(loaded.encode_image(images), adapter.encode_image(images), atol=1e-6)
    assert torch.allclose(loaded.encode_text(captions_400[:6]), adapter.encode_text(captions_400[:6]), atol=1e-6)
    assert loaded.adapter_id() == adapter.adapter_id()
    # only LoRA and projection are stored, not the new model
    stored = sum(p.stat().st_size for p in (tmp_path / "a").rglob("*.safetensors"))
    model_bytes = sum(v.numel() * v.element_size() for v in new.model.state_dict().values())
    assert stored < model_bytes / 5


def test_merged_equals_unmerged(old_new, captions_400, pairs_40):
    old, new = old_new
    adapter = _fit2(old, new, captions_400[:100], pairs_40, stage2={"rank": 4})
    images = [p[0] for p in pairs_40[:6]]
    texts = captions_400[200:210]
    t0, i0 = adapter.encode_text(texts), adapter.encode_image(images)
    adapter.merge()
    assert adapter.merged and not any(hasattr(enc, "peft_model") for enc in adapter.query_encoders.values())
    assert torch.allclose(adapter.encode_text(texts), t0, atol=1e-5)
    assert torch.allclose(adapter.encode_image(images), i0, atol=1e-5)


def test_resume_after_interruption_matches_uninterrupted_run(old_new, captions_400, pairs_40, tmp_path, monkeypatch):
    import importlib

    fit_module = importlib.import_module("xbt.fit")  # the module, not the function xbt.fit

    old, new = old_new
    stage2 = {"epochs": 4, "batch_size": 8, "patience": 10}
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
    assert resumed.training["metrics"]["stage2"]["resumed_from_epoch"] == 2
    texts = captions_400[300:310]
    assert torch.allclose(resumed.encode_text(texts), full.encode_text(texts), atol=1e-6)


def test_checkpoint_of_another_run_is_refused(old_new, captions_400, pairs_40, tmp_path):
    old, new = old_new
    _fit2(old, new, captions_400[:100], pairs_40, checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(XBTError, match="different run"):
        _fit2(old, new, captions_400[:100], pairs_40, stage2={"rank": 2}, checkpoint_dir=tmp_path / "ckpt")


def test_old_image_embeddings_term_and_shape_check(old_new, captions_400, pairs_40):
    old, new = old_new
    images = [p[0] for p in pairs_40]
    old_img = old.encode_image(images)
    adapter = _fit2(old, new, captions_400[:100], pairs_40, old_image_embeddings=old_img)
    assert adapter.training["used_old_image_embeddings"]
    # the text->old-image term trains the text tower's LoRA
    probe = captions_400[300:305]
    assert not torch.allclose(adapter.lora.encode_text(probe), new.encode_text(probe), atol=1e-4)
    with pytest.raises(XBTError, match=r"old_image_embeddings must be \[40, 32\]"):
        _fit2(old, new, captions_400[:100], pairs_40, old_image_embeddings=old_img[:10])
    no_stage1 = _fit2(old, new, captions_400[:100], pairs_40, old_image_embeddings=old_img, use_stage1=False)
    assert "stage1" not in no_stage1.training
    with pytest.raises(XBTError, match="nothing that knows the old space"):
        _fit2(old, new, captions_400[:100], pairs_40, use_stage1=False)


def test_transformers_clip_stage2(captions_400, pairs_40):
    from xbt.encoders import as_encoder

    from .conftest import tiny_hf_clip

    old, new = as_encoder(tiny_hf_clip(32, seed=3)), as_encoder(tiny_hf_clip(40, seed=4))
    adapter = _fit2(old, new, captions_400[:100], pairs_40)
    assert adapter.encode_image([p[0] for p in pairs_40[:3]]).shape == (3, 32)
    from xbt.lora import lora_parameter_count

    assert lora_parameter_count(adapter.lora) > 0


def test_bad_pairs(old_new, captions_400):
    old, new = old_new
    with pytest.raises(XBTError, match="pairs is empty"):
        xbt.fit(old, new, captions_400[:50], pairs=[], verbose=False)
    with pytest.raises(XBTError, match=r"pairs\[0\] image is a str"):
        xbt.fit(old, new, captions_400[:50], pairs=[("not an image", "a caption")], verbose=False)
    with pytest.raises(XBTError, match="unknown stage-2 option"):
        xbt.fit(old, new, captions_400[:50], pairs=pair_list(4), stage2={"rnk": 4}, verbose=False)


def test_bf16_autocast_path_trains_on_cpu(old_new, captions_400, pairs_40):
    old, new = old_new
    adapter = _fit2(old, new, captions_400[:100], pairs_40, stage2={"precision": "bf16", "epochs": 1})
    history = adapter.training["metrics"]["stage2"]
    assert history["precision"] == "bf16"
    assert all(torch.isfinite(torch.tensor(history["train_loss"])))
    out = adapter.encode_text(captions_400[:3])
    assert out.dtype == torch.float32 and torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_pair_confidence_is_the_softmax_diagonal_in_chunks_and_favours_specific_captions():
    from xbt.losses import pair_confidence

    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(50, 16, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.3 * torch.randn(50, 16, generator=gen), dim=-1)
    reference = torch.softmax(img @ txt.T / 0.05, dim=-1).diagonal()
    assert torch.allclose(pair_confidence(img, txt, 0.05), reference, atol=1e-6)
    assert torch.allclose(pair_confidence(img, txt, 0.05, chunk=7), reference, atol=1e-6)  # chunk boundaries
    # A vague caption: the same text for ten images. Each of those pairs is less sure than the
    # pairs whose caption singles out its image.
    vague = txt.clone()
    vague[:10] = torch.nn.functional.normalize(img[:10].mean(0), dim=-1)
    conf = pair_confidence(img, vague, 0.05)
    assert conf[:10].max() < conf[10:].median()


def test_logit_scale_is_read_from_the_model(old_new):
    _, new = old_new
    assert new.logit_scale == pytest.approx(new.model.logit_scale.exp().item())

    class NoScale(torch.nn.Module):
        pass

    from xbt.encoders import CLIPEncoder

    assert CLIPEncoder(NoScale(), None, None, "bare", "open_clip").logit_scale == 100.0


def test_confidence_weighting_changes_what_stage2_learns(old_new, captions_400, pairs_40):
    old, new = old_new
    weighted = _fit2(old, new, captions_400[:100], pairs_40)
    uniform = _fit2(old, new, captions_400[:100], pairs_40, stage2={"confidence_weighting": False})
    images = [p[0] for p in pairs_40[:6]]
    assert not torch.allclose(weighted.encode_image(images), uniform.encode_image(images), atol=1e-5)
    with pytest.raises(XBTError, match="confidence_temperature must be positive"):
        _fit2(old, new, captions_400[:100], pairs_40, stage2={"confidence_temperature": 0.0})


def test_stage1_texts_join_the_caption_bank_without_the_pair_captions(old_new, captions_400, pairs_40):
    old, new = old_new
    texts = captions_400[:100] + [pairs_40[0][1]]  # one pair caption among the stage-1 texts
    adapter = _fit2(old, new, texts, pairs_40)
    distinct_pair_captions = {c for _, c in pairs_40}
    extra = len(set(texts) - distinct_pair_captions)
    assert adapter.training["metrics"]["stage2"]["caption_bank"] == len(pairs_40) + extra
    capped = _fit2(old, new, texts, pairs_40, stage2={"caption_bank_size": 30})
    assert capped.training["metrics"]["stage2"]["caption_bank"] == len(pairs_40) + 30
    pairs_only = _fit2(old, new, texts, pairs_40, stage2={"caption_bank_size": 0})
    assert pairs_only.training["metrics"]["stage2"]["caption_bank"] == len(pairs_40)


def test_caption_bank_embeddings_must_match_the_captions(old_new, pairs_40):
    from xbt.stage2 import train_stage2

    old, new = old_new
    adapter = xbt.fit(old, new, [c for _, c in pairs_40], epochs=1, verbose=False)
    with pytest.raises(XBTError, match="3 rows for 2 bank_captions"):
        train_stage2(new, adapter.projection, [p[0] for p in pairs_40], [p[1] for p in pairs_40],
                     xbt.Stage2Config(epochs=1), bank_captions=["a", "b"],
                     bank_caption_embeddings=torch.zeros(3, 48), verbose=False)
    with pytest.raises(XBTError, match="caption_bank_size must be >= 0"):
        xbt.Stage2Config.from_kwargs(caption_bank_size=-1)
    with pytest.raises(XBTError, match="caption_bank_size must be >= 0"):
        xbt.Stage2Config(caption_bank_size=-1)  # validated on construction, not only through from_kwargs
