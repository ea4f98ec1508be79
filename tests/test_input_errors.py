"""Bad inputs give xbt's one-line ``XBTError`` naming the input and the fix, not a library error or a
traceback: a truncated image among the pairs, option values of the wrong type, ``None`` texts and an
empty image, absurd head shapes in a saved config. And output folders keep a user's file on rewrite.

Each input test failed on the code before its fix (PIL's ``OSError``, ``TypeError``, a 384 TB allocation).
"""

import json
import time
from io import BytesIO

import pytest
from PIL import Image

import xbt
from xbt import XBTError
from xbt.data.pairs import as_pairs
from xbt.data.retrieval import RetrievalDataset
from xbt.gallery import StaticGallery
from xbt.method.config import Stage1Config, Stage2Config
from xbt.models.embedding import embed_texts
from xbt.models.head import Projection
from xbt.toy import pair_list
from xbt.toy import test_split as toy_test_split


def truncated_png() -> Image.Image:
    """A lazily opened PNG whose data is cut: it opens, and fails only when its pixels are loaded."""
    buf = BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, format="PNG")
    image = Image.open(BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2]))
    return image


def _user_file(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_notes.txt").write_text("mine")


def _kept(folder):
    assert (folder / "my_notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------- 1. a truncated image among the pairs


def test_a_truncated_pair_image_is_refused_naming_its_index(old_new, captions_400):
    pairs = pair_list(6)
    pairs[3] = (truncated_png(), pairs[3][1])
    with pytest.raises(XBTError, match=r"pairs\[3\] image does not decode .*truncated or corrupt"):
        as_pairs(pairs)
    with pytest.raises(XBTError, match=r"pairs\[3\] image does not decode"):
        xbt.fit(*old_new, captions_400[:50], pairs=pairs, epochs=1, verbose=False)


def test_an_empty_pair_image_is_refused_naming_its_index():
    pairs = pair_list(3)
    pairs[1] = (Image.new("RGB", (0, 0)), pairs[1][1])
    with pytest.raises(XBTError, match=r"pairs\[1\] image has size 0x0"):
        as_pairs(pairs)


# ---------------------------------------------------------------------- 2. option values of the wrong type


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 2.5}, r"stage-1 option epochs=2.5 has type float; it must be int"),
        ({"seed": "a"}, r"stage-1 option seed='a' has type str; it must be int"),
        ({"hidden": True}, r"stage-1 option hidden=True has type bool; it must be int"),
    ],
)
def test_fit_refuses_stage1_options_of_the_wrong_type(old_new, captions_400, kwargs, match):
    with pytest.raises(XBTError, match=match):
        xbt.fit(*old_new, captions_400[:50], verbose=False, **kwargs)


def test_fit_refuses_stage2_options_of_the_wrong_type(old_new, captions_400):
    with pytest.raises(
        XBTError, match=r"stage-2 option epochs='3' has type str; it must be int or None: pass e.g. epochs=None"
    ):
        xbt.fit(*old_new, captions_400[:50], pairs=pair_list(4), stage2={"epochs": "3"}, verbose=False)


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (Stage1Config, {"lr": "0.1"}, r"lr='0.1' has type str; it must be float"),
        (
            Stage2Config,
            {"image_tower": "lora", "target_modules": "qkv"},
            r"target_modules='qkv' has type str; it must be a tuple of str or None",
        ),
        (Stage2Config, {"text_folds": 2.0}, r"text_folds=2.0 has type float; it must be int or None"),
        (Stage2Config, {"guard": 1}, r"guard=1 has type int; it must be bool"),
        (
            Stage2Config,
            {"image_tower": "lora", "precision": None},
            r"precision=None has type NoneType; it must be str",
        ),
    ],
)
def test_option_types_are_checked_against_their_annotations(cls, kwargs, match):
    with pytest.raises(XBTError, match=match):
        cls.from_kwargs(**kwargs)


def test_option_types_accept_what_they_should():
    cfg = Stage2Config.from_kwargs(
        image_tower="lora", alpha=16, confidence_temperature=None, target_modules=["attn"], text_folds=3
    )
    assert cfg.alpha == 16 and cfg.target_modules == ("attn",) and cfg.text_folds == 3
    assert Stage1Config(lr=1, noise_std=0).lr == 1


# ---------------------------------------------------------------------- 3. None texts and an empty image


def test_encode_text_none_is_refused(stage1_adapter):
    with pytest.raises(XBTError, match=r"texts must be a list of strings, got NoneType"):
        stage1_adapter.encode_text(None)


def test_an_image_without_pixels_is_refused(stage1_adapter):
    with pytest.raises(XBTError, match=r"images\[0\] has size 0x0, no pixels"):
        stage1_adapter.encode_image([Image.new("RGB", (0, 0))])
    with pytest.raises(XBTError, match=r"images\[1\] does not decode"):
        stage1_adapter.encode_image([Image.new("RGB", (8, 8)), truncated_png()])


# ---------------------------------------------------------------------- 4. absurd head shapes


def test_projection_refuses_absurd_shapes_before_allocating():
    start = time.perf_counter()
    with pytest.raises(XBTError, match=r"hidden=1000000000000 would hold .* parameters, above the 2,147,483,648"):
        Projection(96, 64, hidden=10**12)
    assert time.perf_counter() - start < 1
    with pytest.raises(XBTError, match=r"d_new=0 must be an int >= 1"):
        Projection(0, 64, 8)
    with pytest.raises(XBTError, match=r"hidden=-1 must be an int >= 0"):
        Projection(96, 64, -1)


def test_a_saved_config_with_absurd_head_shapes_fails_at_once(stage1_adapter, old_new, tmp_path):
    folder = stage1_adapter.save_pretrained(tmp_path / "a")
    path = folder / "xbt_config.json"
    config = json.loads(path.read_text())
    for shape in config["head_shapes"].values():
        shape["hidden"] = 10**12
    path.write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(XBTError):  # the shape check, or a digest check of the folder that runs before it
        xbt.load_adapter(folder, new=old_new[1])
    assert time.perf_counter() - start < 10


def test_read_heads_refuses_absurd_head_shapes(stage1_adapter, tmp_path):
    from xbt.adapters.folder import read_heads

    folder = stage1_adapter.save_pretrained(tmp_path / "a")
    config = stage1_adapter.config()
    config = type(config).from_dict(
        {**config.to_dict(), "head_shapes": {"shared": {"d_new": 48, "d_old": 32, "hidden": 10**12}}}
    )
    with pytest.raises(XBTError, match=r"hidden=1000000000000 would hold"):
        read_heads(folder, config)


# ---------------------------------------------------------------------- 5. output folders keep the user's files


def test_the_embedding_cache_keeps_a_users_file(old_new, tmp_path):
    _user_file(tmp_path / "cache")
    for _ in range(2):
        embed_texts(old_new[0], ["a red circle", "a blue square"], cache=tmp_path / "cache", verbose=False)
    _kept(tmp_path / "cache")


def test_a_report_folder_keeps_a_users_file(stage1_adapter, old_new, tmp_path):
    images, captions = toy_test_split(6)
    ds = RetrievalDataset(images, captions, name="tiny")
    report = xbt.evaluate(old_new[0], stage1_adapter, dataset=ds, query_cost=False, verbose=False)
    report.save(tmp_path / "rep")
    _user_file(tmp_path / "rep")
    report.save(tmp_path / "rep")
    _kept(tmp_path / "rep")


def test_a_checkpoint_folder_keeps_a_users_file(old_new, captions_400, tmp_path):
    _user_file(tmp_path / "ckpt")
    stage2 = {"image_tower": "lora", "epochs": 1, "batch_size": 8, "text_epochs": 1, "val_fraction": 0.0, "rank": 2}
    for _ in range(2):
        xbt.fit(
            *old_new,
            captions_400[:60],
            pairs=pair_list(12),
            epochs=1,
            stage2=stage2,
            checkpoint_dir=tmp_path / "ckpt",
            verbose=False,
        )
    _kept(tmp_path / "ckpt")


def test_a_static_gallery_folder_keeps_a_users_file(old_new, tmp_path):
    images, captions = toy_test_split(6)
    gallery = StaticGallery.build(old_new[0], RetrievalDataset(images, captions, name="tiny"), verbose=False)
    gallery.save(tmp_path / "gal")
    _user_file(tmp_path / "gal")
    gallery.save(tmp_path / "gal")
    _kept(tmp_path / "gal")


def test_fit_refuses_stage2_options_that_are_not_a_dict(old_new, captions_400):
    with pytest.raises(XBTError, match=r"stage2 must be a dict of stage-2 options, got int"):
        xbt.fit(*old_new, captions_400[:20], pairs=pair_list(4), stage2=5, verbose=False)


def test_baseline_options_of_the_wrong_type_are_refused():
    with pytest.raises(XBTError, match=r"ridge=.*must be float"):
        xbt.BaselineConfig.for_method("linear", ridge="0.1")
    assert xbt.BaselineConfig.for_method("linear", ridge=1).ridge == 1
