"""Stage 1 end to end on tiny random models: shapes, improvement over Procrustes, determinism."""

import pytest
import torch
import torch.nn.functional as F

import xbt
from xbt import XBTError
from xbt.baselines.maps import orthogonal_procrustes
from xbt.models.embedding import embed_texts
from xbt.toy import pair_list

from .conftest import fit_briefly, tiny_hf_clip


def _heldout_cosines(old, new, adapter, train_texts, test_texts):
    old_tr, new_tr = embed_texts(old, train_texts), embed_texts(new, train_texts)
    w = orthogonal_procrustes(new_tr, old_tr)
    old_te, new_te = embed_texts(old, test_texts), embed_texts(new, test_texts)
    procrustes = (F.normalize(new_te @ w.T, dim=-1) * old_te).sum(-1).mean().item()
    fitted = (adapter.encode_text(test_texts) * old_te).sum(-1).mean().item()
    return procrustes, fitted


def test_fit_maps_into_old_space_and_beats_procrustes(old_new, captions_400):
    old, new = old_new
    train, test = captions_400[:300], captions_400[300:]
    # Cosine-heavy, as in the transformers test below: on two random encoders InfoNCE trades mean
    # cosine for rank, and whether early stopping on ~30 held-out texts catches the cosine peak at
    # the default weight depends on which texts are held out.
    adapter = xbt.fit(old, new, train, epochs=40, cosine_weight=5.0, verbose=False)
    out = adapter.encode_text(test[:7])
    assert out.shape == (7, old.embed_dim) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=-1), torch.ones(7), atol=1e-5)
    procrustes, fitted = _heldout_cosines(old, new, adapter, train, test)
    # "clearly above": closes at least a tenth of the distance from the Procrustes start to a perfect map
    assert fitted > procrustes + (1 - procrustes) / 10, (procrustes, fitted)


def test_encode_image_lands_in_old_space(old_new, captions_400):
    from xbt.toy import test_split

    old, new = old_new
    adapter = xbt.fit(old, new, captions_400[:100], epochs=2, verbose=False)
    images, _ = test_split(3)
    out = adapter.encode_image(images)
    assert out.shape == (3, old.embed_dim)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    pixels = new.preprocess_images(images)
    assert torch.allclose(adapter.encode_image(pixels), out, atol=1e-6)


def test_same_seed_same_adapter_and_different_seed_differs(old_new, captions_400):
    old, new = old_new
    a = xbt.fit(old, new, captions_400[:200], epochs=3, seed=7, verbose=False)
    b = xbt.fit(old, new, captions_400[:200], epochs=3, seed=7, verbose=False)
    c = xbt.fit(old, new, captions_400[:200], epochs=3, seed=8, verbose=False)
    probe = captions_400[350:360]
    assert torch.equal(a.encode_text(probe), b.encode_text(probe))
    assert a.adapter_id() == b.adapter_id() != c.adapter_id()


def test_fit_accepts_raw_open_clip_models_and_generators(old_new, captions_400):
    old, new = old_new
    adapter = xbt.fit(old.model, new.model, (t for t in captions_400[:100]), epochs=1, verbose=False)
    assert adapter.encode_text(["a red circle"]).shape == (1, 32)


def test_fit_runs_with_tiny_transformers_clip(captions_400):
    old = xbt.models.encoders.as_encoder(tiny_hf_clip(32, seed=3))
    new = xbt.models.encoders.as_encoder(tiny_hf_clip(40, seed=4))
    train, test = captions_400[:300], captions_400[300:]
    # The default cosine weight (0.5) is tuned for retrieval on the toy world; on two random
    # encoders and 300 texts InfoNCE then trades mean cosine for rank, so this test asks for the
    # cosine-heavy setting whose held-out cosine it checks.
    adapter = xbt.fit(old, new, train, epochs=20, cosine_weight=5.0, verbose=False)
    assert adapter.new.backend == "transformers"
    out = adapter.encode_text(test[:10])
    assert out.shape == (10, 32)
    procrustes, fitted = _heldout_cosines(old, new, adapter, train, test)
    assert fitted > procrustes, (procrustes, fitted)


# the regressions this file guards (each failed on the code before its fix)


@pytest.mark.parametrize("method", ["xbt", "xbt+pairs", "procrustes", "linear", "slerp"])
def test_fit_leaves_the_callers_global_rng_alone(old_new, captions_400, method):
    """``torch.manual_seed`` inside fit (and unseeded module init) changed the caller's global RNG."""
    old, new = old_new
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    if method == "xbt+pairs":
        fit_briefly(old, new, captions_400[:60], pair_list(12))
    else:
        xbt.fit(
            old, new, captions_400[:60], pairs=pair_list(12), method=method, epochs=1, verbose=False
        ) if method == "xbt" else xbt.fit(
            old, new, captions_400[:60], pairs=pair_list(12), method=method, verbose=False
        )
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    "option",
    [
        {"stage2": {"epochs": 1}},
        {"old_image_embeddings": torch.zeros(4, 32)},
        {"checkpoint_dir": "ckpt"},
        {"use_stage1": False},
    ],
)
@pytest.mark.parametrize("method", ["procrustes", "slerp"])
def test_xbt_only_options_are_refused_for_other_methods(old_new, captions_400, method, option):
    """For non-XBT methods, stage2=, old_image_embeddings=, checkpoint_dir=, use_stage1= were dropped silently."""
    with pytest.raises(XBTError, match=rf"\['{next(iter(option))}'\] only apply to method 'xbt'.*method '{method}'"):
        xbt.fit(*old_new, captions_400[:60], pairs=pair_list(4), method=method, alpha=0.5, verbose=False, **option)


def test_stage1_noise_follows_the_new_models_logit_scale(captions_400):
    """Unset, stage 1's noise is the NEW logit scale x NOISE_PER_LOGIT_SCALE (the modality gap widens with it),
    and the image head's text prior uses what stage 1 used; set, each is kept."""
    from xbt.method.config import NOISE_PER_LOGIT_SCALE, noise_for

    pairs = xbt.toy.pairs(24)
    for world in ("shapes", "patterns-wide"):
        old, new = xbt.toy.get_world(world).load_clips()
        a = xbt.fit(old, new, captions_400[:120], epochs=1, verbose=False)
        expected = NOISE_PER_LOGIT_SCALE * new.logit_scale
        assert a.training["stage1"]["noise_std"] == pytest.approx(expected) == noise_for(new.logit_scale)
        b = xbt.fit(old, new, captions_400[:120], pairs=pairs, stage1=a, stage2={"epochs": 1}, verbose=False)
        assert b.training["stage2"]["text_prior_noise"] == pytest.approx(expected)
    assert noise_for(31.909) == pytest.approx(0.0997, abs=1e-4) and noise_for(100) == pytest.approx(0.3125)
    c = xbt.fit(old, new, captions_400[:120], epochs=1, noise_std=0.05, verbose=False)
    assert c.training["stage1"]["noise_std"] == 0.05
    d = xbt.fit(
        old,
        new,
        captions_400[:120],
        pairs=pairs,
        stage1=c,
        stage2={"epochs": 1, "text_prior_noise": 0.2},
        verbose=False,
    )
    assert d.training["stage2"]["text_prior_noise"] == 0.2
