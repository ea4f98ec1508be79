"""The forward map: stored OLD gallery vectors moved into the NEW space, trained on the toy CLIPs."""

import json

import pytest
import torch

import xbt
from xbt.evaluation.search import recall_at_k
from xbt.forward import ForwardMap, fit_forward
from xbt.models.embedding import embed_images, embed_texts


@pytest.fixture(scope="module")
def fitted():
    old, new = xbt.toy.load_clips(device="cpu")
    fmap = fit_forward(
        old,
        new,
        xbt.toy.text_corpus(4000),
        pairs=xbt.toy.pairs(300),
        stage1={"epochs": 4},
        config={"epochs": 6},
        verbose=False,
    )
    return old, new, fmap


def test_upgraded_old_vectors_are_found_by_new_queries(fitted):
    old, new, fmap = fitted
    images, caps = xbt.toy.test_split(200)
    texts = [c[0] for c in caps]
    q = embed_texts(new, texts, verbose=False)
    upgraded = fmap.upgrade(embed_images(old, images, verbose=False), "image")
    assert upgraded.shape == (200, new.embed_dim) and torch.allclose(upgraded.norm(dim=1), torch.ones(200))
    owners = torch.arange(200)
    r_up = recall_at_k(q, upgraded, owners, owners, (1, 10)).recall
    # a map that ignores what each old vector holds finds nothing: the upgraded gallery must beat a shuffled one
    shuffled = upgraded[torch.randperm(200, generator=torch.Generator().manual_seed(0))]
    r_shuffled = recall_at_k(q, shuffled, owners, owners, (1, 10)).recall
    assert r_up[10] > r_shuffled[10] + 0.2


def test_the_image_head_is_guarded_on_held_out_pairs(fitted):
    record = fitted[2].training["image"]
    scores = record["val_geo_mean_rank"]
    assert record["n_val"] == 60 and len(scores) >= 2  # the caption head's own score, then each epoch's
    assert scores[record["kept_epoch"]] == min(scores)


def test_a_forward_map_round_trips_and_refuses_damage_and_wrong_widths(fitted, tmp_path):
    old, _, fmap = fitted
    folder = fmap.save(tmp_path / "fm")
    again = ForwardMap.load(folder)
    assert again.map_id == fmap.map_id and again.old_ref.fingerprint == old.fingerprint
    x = torch.nn.functional.normalize(torch.randn(7, old.embed_dim), dim=1)
    assert torch.equal(again.upgrade(x, "text"), fmap.upgrade(x, "text"))
    with pytest.raises(xbt.XBTError, match="old vectors must be"):
        fmap.upgrade(torch.randn(3, old.embed_dim + 1), "image")
    with pytest.raises(xbt.XBTError, match="'text' or 'image'"):
        fmap.upgrade(x, "audio")
    config = json.loads((folder / "forward_config.json").read_text())
    config["map_id"] = "0" * 24
    (folder / "forward_config.json").write_text(json.dumps(config))
    with pytest.raises(xbt.XBTError, match="damaged copy"):
        ForwardMap.load(folder)
    with pytest.raises(xbt.XBTError, match="holds no forward map"):
        ForwardMap.load(tmp_path)


def test_forward_options_are_checked():
    with pytest.raises(xbt.XBTError, match="text_weight"):
        xbt.forward.ForwardConfig(text_weight=-1.0)
    with pytest.raises(xbt.XBTError, match="unknown forward-map option"):
        xbt.forward.ForwardConfig.from_kwargs(epoch=3)
