"""Each kind of bad input gets an XBTError that names the problem and the fix."""

import math

import pytest
import torch

import xbt
from xbt import XBTError
from xbt.core.checks import check_finite

from .conftest import tiny_open_clip


def test_empty_texts(old_new):
    old, new = old_new
    with pytest.raises(XBTError, match="texts is empty"):
        xbt.fit(old, new, [], verbose=False)


def test_single_string_instead_of_list(old_new):
    old, new = old_new
    with pytest.raises(XBTError, match="single string"):
        xbt.fit(old, new, "a red circle", verbose=False)


def test_non_string_items_name_the_index(old_new):
    old, new = old_new
    with pytest.raises(XBTError, match=r"texts\[1\] is a int"):
        xbt.fit(old, new, ["a red circle", 3, "a blue square"], verbose=False)


def test_nan_embeddings_are_refused():
    emb = torch.randn(4, 8)
    emb[2, 3] = math.nan
    with pytest.raises(XBTError, match=r"1 of 4 embeddings contain NaN.*first rows \[2\]"):
        check_finite(emb, "text embeddings")


def test_nan_weights_surface_as_clear_error(old_new, captions_400):
    old, _ = old_new
    broken = tiny_open_clip(48, seed=5)
    with torch.no_grad():
        broken.text_projection.fill_(math.nan)
    with pytest.raises(XBTError, match="NaN or inf"):
        xbt.fit(old, broken, captions_400[:50], verbose=False)


def test_same_model_as_old_and_new(old_new, captions_400):
    old, _ = old_new
    with pytest.raises(XBTError, match="same model"):
        xbt.fit(old, old, captions_400[:50], verbose=False)
    # a separate copy with identical weights is the same model too
    twin = xbt.models.encoders.as_encoder(tiny_open_clip(32, seed=1))
    with pytest.raises(XBTError, match="same model"):
        xbt.fit(old, twin, captions_400[:50], verbose=False)


def test_unknown_option_lists_valid_ones(old_new, captions_400):
    old, new = old_new
    with pytest.raises(XBTError, match="unknown stage-1 option.*noise_sdt.*valid options"):
        xbt.fit(old, new, captions_400[:50], noise_sdt=0.1, verbose=False)


def test_unknown_method(old_new, captions_400):
    old, new = old_new
    with pytest.raises(XBTError, match="unknown method"):
        xbt.fit(old, new, captions_400[:50], method="magic", verbose=False)


def test_not_a_clip_model(old_new, captions_400):
    old, _ = old_new
    with pytest.raises(XBTError, match="cannot use a Linear as a CLIP model"):
        xbt.fit(old, torch.nn.Linear(3, 3), captions_400[:50], verbose=False)


def test_adapter_heads_must_fit_both_models(old_new):
    from xbt.models.head import Projection

    old, new = old_new
    with pytest.raises(XBTError, match="heads map into 16-d but the old model 'tiny-old' is 32-d"):
        xbt.Adapter(new, Projection(48, 16, hidden=0), old=old)
    with pytest.raises(XBTError, match="text head expects 40-d new embeddings but tiny-new gives 48-d"):
        xbt.Adapter(new, Projection(40, 32, hidden=0), old=old)
    with pytest.raises(XBTError, match="different widths"):
        xbt.Adapter(new, heads={"text": Projection(48, 32, hidden=0), "image": Projection(48, 16, hidden=0)})
    with pytest.raises(XBTError, match="exactly one of projection= .* or heads="):
        xbt.Adapter(new)
