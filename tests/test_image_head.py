"""Stage 2's default image path: a head on the frozen image tower, pairs grouped and held out by image."""

import pytest
import torch
import torch.nn.functional as F

import xbt
from xbt import XBTError
from xbt.method.config import HEAD_TEMPERATURE_FACTOR, Stage2Config
from xbt.method.guard import owned_ranks, target_ranks
from xbt.method.losses import multi_positive_nce, pseudo_captions, spread_temperature
from xbt.toy import load_clips, pair_list


@pytest.fixture(scope="module")
def toy_clips():
    return load_clips(device="cpu")


@pytest.fixture(scope="module")
def rows_5x40():
    return pair_list(40, captions_per_image=5)  # 40 images, each with its 5 captions: 200 rows


def test_owned_ranks_take_each_querys_best_own_row():
    torch.manual_seed(0)
    queries, gallery = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(20, 8), dim=-1)
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5] + [-1] * 10)
    ranks = owned_ranks(queries, gallery, owner)
    for q in range(6):  # brute force: the best own row, with the other own rows taken out of the gallery
        own = torch.nonzero(owner == q).flatten()
        best = own[(queries[q] @ gallery[own].T).argmax()]
        keep = torch.cat([best[None], torch.nonzero(owner != q).flatten()])
        assert ranks[q] == target_ranks(queries[q : q + 1], gallery[keep], torch.tensor([0]))[0]
    # one owned row per query and no distractor: the plain target ranks
    assert torch.equal(
        owned_ranks(queries, gallery[:6], torch.arange(6)), target_ranks(queries, gallery[:6], torch.arange(6))
    )
    with pytest.raises(XBTError, match="owns no gallery row"):
        owned_ranks(queries, gallery, torch.full((20,), -1))


def test_multi_positive_nce_is_cross_entropy_with_one_positive_and_lets_positives_share():
    torch.manual_seed(1)
    q, g = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    eye = torch.eye(4, dtype=torch.bool)
    assert torch.allclose(multi_positive_nce(q, g, eye, 0.1), F.cross_entropy(q @ g.T / 0.1, torch.arange(4)))
    both = torch.cat([g, g])  # each query's right item twice: the two copies do not compete
    assert torch.allclose(
        multi_positive_nce(q, both, torch.cat([eye, eye], 1), 0.1), multi_positive_nce(q, g, eye, 0.1)
    )


def test_options_of_the_other_tower_are_refused_and_defaults_follow_the_tower():
    frozen, lora = Stage2Config(), Stage2Config(image_tower="lora")
    assert (frozen.epochs, frozen.batch_size, frozen.temperature) == (40, 256, None)
    assert (lora.epochs, lora.batch_size, lora.temperature) == (5, 64, 0.05)
    assert (frozen.patience, lora.patience) == (None, 3)  # the frozen head runs its whole schedule
    assert Stage2Config(epochs=3).epochs == 3
    with pytest.raises(XBTError, match=r"\['patience'\] only apply to image_tower='lora'"):
        Stage2Config(patience=5)
    with pytest.raises(XBTError, match=r"\['rank'\] only apply to image_tower='lora'.*pass image_tower='lora'"):
        Stage2Config(rank=4)
    with pytest.raises(XBTError, match=r"\['image_losses'\] only apply to image_tower='frozen'"):
        Stage2Config(image_tower="lora", image_losses=("captions",))
    with pytest.raises(XBTError, match="image_losses must name"):
        Stage2Config(image_losses=("pixels",))
    x = F.normalize(torch.randn(300, 16), dim=-1)
    sims = (x @ x.T)[torch.triu_indices(300, 300, 1).unbind()]
    assert spread_temperature(x, HEAD_TEMPERATURE_FACTOR) == pytest.approx(
        HEAD_TEMPERATURE_FACTOR * float(sims.std()), rel=1e-5
    )
    # closer captions (a smaller spread) need a sharper softmax
    closer = F.normalize(x + 3 * torch.ones(16), dim=-1)
    assert spread_temperature(closer, HEAD_TEMPERATURE_FACTOR) < spread_temperature(x, HEAD_TEMPERATURE_FACTOR)


def test_default_stage2_groups_by_image_holds_out_by_image_and_trains_a_frozen_head(toy_clips, rows_5x40):
    old, new = toy_clips
    texts = xbt.toy.text_corpus(600)
    adapter = xbt.fit(old, new, texts, pairs=rows_5x40, epochs=1, stage2={"epochs": 3}, verbose=False, cache=False)
    record = adapter.training["metrics"]["stage2"]
    assert record["n_images"] == 40 and record["n_val_images"] == 8
    assert record["n_val"] == 40 and record["n_train"] == 160  # every caption of a held-out image is held out
    assert record["image_tower"] == "frozen" and adapter.lora is None
    stage1_texts = list(dict.fromkeys(texts))
    assert record["image"]["temperature"] == pytest.approx(
        spread_temperature(old.encode_text(stage1_texts), HEAD_TEMPERATURE_FACTOR), rel=1e-3
    )
    runs = record["image"]["history"]
    assert set(runs) == {"captions", "old_images"} and all(len(r["val_geo_mean_rank"]) == 3 for r in runs.values())
    assert "pseudo_captions" not in runs["captions"]  # five captions per image: no pseudo-captions join them
    scores = record["image"]["choice"]["scores"]  # every epoch scored; each run's end state the candidate
    assert set(scores) == {"stage 1", "stage 2 (captions, epoch 3)", "stage 2 (old_images, epoch 3)"}
    assert scores["stage 2 (captions, epoch 3)"] == runs["captions"]["val_geo_mean_rank"][-1]
    kept = record["image"]["choice"]["chosen"]
    clear = {f"stage 2 ({n}, epoch 3)" for n, r in runs.items() if r["gain_over_stage1"][0] > r["gain_over_stage1"][1]}
    assert scores[kept] == min(scores[k] for k in {"stage 1"} | clear)  # the held-out best of stage 1 and clear gains
    # the image query runs the bare new tower: the head alone moves it
    images = [im for im, _ in rows_5x40[:10:5]]
    bare = new.encode_image(images)
    assert torch.allclose(adapter.encode_image(images), adapter.heads["image"](bare), atol=1e-5)
    assert "image" in record["versus_old_model"]


def test_an_end_state_replaces_stage_1_only_on_a_clear_paired_gain(toy_clips, monkeypatch):
    old, new = toy_clips
    texts, pairs, stage2 = xbt.toy.text_corpus(2000), pair_list(100), {"epochs": 6, "text_head": False}

    def fit():
        adapter = xbt.fit(old, new, texts, pairs=pairs, epochs=1, stage2=stage2, verbose=False, cache=False)
        return adapter.training["metrics"]["stage2"]["image"]

    trained = fit()
    gains = {n: r["gain_over_stage1"] for n, r in trained["history"].items()}
    assert trained["choice"]["chosen"] != "stage 1" and any(g > se for g, se in gains.values())
    monkeypatch.setattr("xbt.method.heads.paired_gain", lambda base, logs: (0.0, 1.0))  # no gain is clear
    unclear = fit()
    assert unclear["choice"]["scores"] == trained["choice"]["scores"]  # the same runs, scored alike
    assert unclear["choice"]["chosen"] == "stage 1"  # a lower held-out score alone does not replace stage 1


def test_without_the_guard_the_last_epoch_of_the_last_run_is_kept(toy_clips, rows_5x40):
    old, new = toy_clips
    stage2 = {"epochs": 3, "guard": False, "text_head": False}
    adapter = xbt.fit(old, new, xbt.toy.text_corpus(600), pairs=rows_5x40, epochs=1, stage2=stage2, verbose=False)
    choice = adapter.training["metrics"]["stage2"]["image"]["choice"]
    assert choice["chosen"] == "stage 2 (old_images, epoch 3)"  # each run's end state scored, none chosen by it
    assert len(choice["scores"]) == 1 + 2 and adapter.heads["image"] is not adapter.heads["text"]


def test_the_frozen_tower_refuses_a_checkpoint_folder(old_new, captions_400, tmp_path):
    with pytest.raises(XBTError, match="checkpoint_dir resumes LoRA training.*image_tower='lora'"):
        xbt.fit(*old_new, captions_400[:60], pairs=pair_list(8), epochs=1, checkpoint_dir=str(tmp_path), verbose=False)


def test_unlabeled_images_join_the_old_images_run_and_bad_ones_are_refused(old_new, captions_400):
    old, new = old_new
    extra = [im for im, _ in xbt.toy.pair_list(30)[20:]]  # 10 images without captions
    pairs = pair_list(20)
    stage2 = {"epochs": 2, "batch_size": 8, "text_epochs": 1, "val_fraction": 0.0, "pseudo_captions": 0}
    adapter = xbt.fit(
        old, new, captions_400[:60], pairs=pairs, unlabeled=extra, epochs=1, stage2=stage2, verbose=False
    )
    record = adapter.training["metrics"]["stage2"]["image"]
    assert record["unlabeled_images"] == 10 and record["history"]["old_images"]["train_loss"]
    assert "1.00 captions per image" in record["history"]["captions"]["skipped"]  # one caption each: no captions run
    plain = xbt.fit(old, new, captions_400[:60], pairs=pairs, epochs=1, stage2=stage2, verbose=False)
    assert plain.training["metrics"]["stage2"]["image"]["unlabeled_images"] == 0
    assert not torch.equal(adapter.heads["image"].linear.weight, plain.heads["image"].linear.weight)
    given = torch.nn.functional.normalize(torch.randn(10, old.embed_dim), dim=-1)
    with pytest.raises(XBTError, match=r"old_unlabeled_embeddings must be \[10, 32\]"):
        xbt.fit(old, new, captions_400[:60], pairs=pairs, unlabeled=extra, old_unlabeled_embeddings=given[:4])
    with pytest.raises(XBTError, match="pass unlabeled=... too"):
        xbt.fit(old, new, captions_400[:60], pairs=pairs, old_unlabeled_embeddings=given)
    with pytest.raises(XBTError, match=r"unlabeled\[1\] is a str"):
        xbt.fit(old, new, captions_400[:60], pairs=pairs, unlabeled=[extra[0], "not an image"])
    with pytest.raises(XBTError, match="only apply to method 'xbt'"):
        xbt.fit(old, new, captions_400[:60], pairs=pairs, unlabeled=extra, method="procrustes")
    with pytest.raises(XBTError, match="only apply to stage 2"):
        xbt.fit(old, new, captions_400[:60], unlabeled=extra)


@pytest.mark.parametrize("tower", ["frozen", "lora"])
def test_without_old_vectors_both_towers_train_and_skip_the_comparison(old_new, captions_400, tower):
    stage2 = {"image_tower": tower, "epochs": 1, "batch_size": 8, "text_epochs": 1}
    adapter = xbt.fit(
        *old_new,
        captions_400[:60],
        pairs=pair_list(40),
        epochs=1,
        embed_pairs_with_old=False,
        stage2=stage2,
        verbose=False,
    )
    record = adapter.training["metrics"]["stage2"]
    assert record["n_val"] == 8 and "skipped" in record["versus_old_model"]


def test_pseudo_captions_are_the_old_vectors_of_the_texts_the_new_model_ranks_first(old_new, captions_400):
    gen = torch.Generator().manual_seed(0)
    new_img, texts_new = (F.normalize(torch.randn(n, 8, generator=gen), dim=-1) for n in (6, 50))
    texts_old = F.normalize(torch.randn(50, 5, generator=gen), dim=-1)
    best = torch.stack([torch.argsort(-(texts_new @ v), stable=True)[:3] for v in new_img])  # brute force
    assert torch.equal(pseudo_captions(new_img, texts_new, texts_old, 3), texts_old[best])
    with pytest.raises(XBTError, match=r"\['pseudo_captions'\] only apply to image_tower='frozen'"):
        Stage2Config(image_tower="lora", pseudo_captions=3)
    with pytest.raises(XBTError, match="pseudo_captions must be >= 0"):
        Stage2Config(pseudo_captions=-1)
    # one caption per image: the captions run trains on each image's caption and its pseudo-captions
    old, new = old_new
    stage2 = {"epochs": 2, "batch_size": 8, "text_epochs": 1, "pseudo_captions": 4}
    adapter = xbt.fit(old, new, captions_400[:60], pairs=pair_list(20), epochs=1, stage2=stage2, verbose=False)
    record = adapter.training["metrics"]["stage2"]["image"]
    assert record["history"]["captions"]["pseudo_captions"] == 4 and len(record["history"]["captions"]["train_loss"])
    # the guard counts a held-out image's pseudo-captions as its own, and says so
    assert record["choice"]["measure"].endswith("each image's pseudo-captions count as its own")
