"""The retrieval evaluator: FAISS Recall@K against a numpy reference, hit rules, ties, flips, reports, CLI."""

import importlib
import json

import numpy as np
import pytest
import torch

import xbt
import xbt.toy  # noqa: F401  (xbt.toy.test_split)
from xbt.adapters.adapter import Adapter
from xbt.core.errors import XBTError
from xbt.data.retrieval import RetrievalDataset, load_dataset
from xbt.evaluation.evaluate import flip_rates, gap_closure
from xbt.evaluation.report import Report
from xbt.evaluation.search import recall_at_k, search
from xbt.models.embedding import embed_images, embed_texts
from xbt.models.head import Projection

from .conftest import tiny_open_clip
from .fixtures_data import make_karpathy

ev = importlib.import_module("xbt.evaluation.evaluate")  # the module (xbt.evaluate is the function)

# ---------------------------------------------------------------------- the independent reference


def reference_hits(query, gallery, query_owner, gallery_owner, ks):
    """Brute force: full score matrix, stable argsort (ties: lower gallery index first), owner match."""
    scores = np.asarray(query, np.float64) @ np.asarray(gallery, np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")
    match = np.asarray(gallery_owner)[order] == np.asarray(query_owner)[:, None]
    return {k: match[:, :k].any(axis=1) for k in ks}


def random_gallery(seed, n_images=40, d=16, max_caps=6):
    """Unit image embeddings and 1..max_caps noisy caption embeddings per image."""
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((n_images, d)).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    counts = rng.integers(1, max_caps + 1, n_images)
    owner = np.repeat(np.arange(n_images), counts)
    cap = img[owner] + 0.9 * rng.standard_normal((len(owner), d)).astype(np.float32)
    cap /= np.linalg.norm(cap, axis=1, keepdims=True)
    return img, cap, owner


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_brute_force_reference(seed):
    img, cap, cap_owner = random_gallery(seed)
    img_owner = np.arange(len(img))
    ks = (1, 5, 10, 10_000)
    i2t = recall_at_k(torch.from_numpy(img), torch.from_numpy(cap), img_owner, cap_owner, ks)
    t2i = recall_at_k(cap, img, cap_owner, img_owner, ks)
    ref_i2t = reference_hits(img, cap, img_owner, cap_owner, ks)
    ref_t2i = reference_hits(cap, img, cap_owner, img_owner, ks)
    for k in ks:
        np.testing.assert_array_equal(i2t.hits[k], ref_i2t[k])
        np.testing.assert_array_equal(t2i.hits[k], ref_t2i[k])
        assert i2t.recall[k] == pytest.approx(ref_i2t[k].mean())
    # the data is hard enough that R@1 is neither 0 nor 1, so the comparison means something
    assert 0.05 < t2i.recall[1] < 0.95 and 0.05 < i2t.recall[1] < 0.95
    # K above the gallery size is clipped to it: every query finds its target
    assert i2t.recall[10_000] == 1.0 and t2i.recall[10_000] == 1.0


def test_ties_lower_gallery_index_first_and_independent_of_max_k():
    # quantised vectors: scores are exact in float32 and heavily tied
    rng = np.random.default_rng(3)
    q = rng.integers(-2, 3, (150, 6)).astype(np.float32) / 4
    g = rng.integers(-2, 3, (200, 6)).astype(np.float32) / 4
    ref_order = np.argsort(-(q @ g.T), axis=1, kind="stable")
    for k in (1, 3, 7, 64, 200):
        _, ids = search(q, g, k)
        np.testing.assert_array_equal(ids, ref_order[:, :k])
    q_owner, g_owner = rng.integers(0, 20, 150), rng.integers(0, 20, 200)
    ref = reference_hits(q, g, q_owner, g_owner, (1, 5))
    alone = recall_at_k(q, g, q_owner, g_owner, ks=(1,))
    with_more = recall_at_k(q, g, q_owner, g_owner, ks=(1, 5, 50))
    np.testing.assert_array_equal(alone.hits[1], ref[1])
    np.testing.assert_array_equal(with_more.hits[1], ref[1])
    np.testing.assert_array_equal(with_more.hits[5], ref[5])


def test_duplicate_gallery_items_tie_in_favour_of_the_lower_index():
    q = np.array([[1.0, 0.0]], np.float32)
    g = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], np.float32)  # three exact ties
    r = recall_at_k(q, g, [7], [0, 3, 7, 5], ks=(1, 2, 3))
    assert [bool(r.hits[k][0]) for k in (1, 2, 3)] == [False, True, True]
    assert r.first_hit.tolist() == [1]


def test_image_to_text_hit_is_any_of_the_images_captions():
    ds = RetrievalDataset(images=["img0", "img1"], captions=[["c0", "c1"], ["c2"]], name="t")
    img = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    cap = np.array(
        [
            [0.0, 1.0, 0.0],  # c0 (image 0): score 0 for image 0
            [0.9, 0.1, 0.0],  # c1 (image 0): second for image 0
            [1.0, 0.0, 0.0],
        ],  # c2 (image 1): first for image 0
        np.float32,
    )
    r = recall_at_k(img, cap, np.arange(2), ds.caption_owner(), ks=(1, 2, 3))
    # image 0: c2 (wrong image) ranks first, then c1: a hit at K=2 through its *second* caption
    assert r.hits[1].tolist()[0] is False and r.hits[2].tolist()[0] is True
    assert r.first_hit.tolist()[0] == 1


def test_text_to_image_hit_is_the_captions_own_image():
    ds = RetrievalDataset(images=["img0", "img1", "img2"], captions=[["c0", "c1"], ["c2"], ["c3"]], name="t")
    cap = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    img = np.array([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6]], np.float32)
    r = recall_at_k(cap, img, ds.caption_owner(), np.arange(3), ks=(1, 2, 3))
    # c0 (image 0) ranks image 1, image 2, image 0: its own image only at K=3
    # c1 (image 0) ranks image 0 first; c2 (image 1) ranks image 1 first; c3 (image 2) ranks image 0, 2, 1
    assert r.hits[1].tolist() == [False, True, True, False]
    assert r.hits[2].tolist() == [False, True, True, True]
    assert r.hits[3].tolist() == [True, True, True, True]


def test_ivf_probing_every_cell_is_exact():
    img, cap, cap_owner = random_gallery(5, n_images=200, d=16, max_caps=4)
    flat = recall_at_k(img, cap, np.arange(200), cap_owner, ks=(1, 5))
    ivf = recall_at_k(img, cap, np.arange(200), cap_owner, ks=(1, 5), index="ivf", nlist=8, nprobe=8)
    for k in (1, 5):
        np.testing.assert_array_equal(flat.hits[k], ivf.hits[k])
    rough = recall_at_k(img, cap, np.arange(200), cap_owner, ks=(1, 5), index="ivf", nlist=8, nprobe=1)
    assert rough.recall[5] <= 1.0 and rough.first_hit.shape == (200,)


def test_search_input_errors():
    with pytest.raises(XBTError, match="queries are 4-d but the gallery is 3-d"):
        search(np.ones((2, 4)), np.ones((3, 3)), 1)
    with pytest.raises(XBTError, match="NaN"):
        search(np.full((1, 2), np.nan), np.ones((3, 2)), 1)
    with pytest.raises(XBTError, match="query_owner has 1 entries for 2 embeddings"):
        recall_at_k(np.ones((2, 2)), np.ones((3, 2)), [0], [0, 1, 2])
    with pytest.raises(XBTError, match="ks must be positive"):
        recall_at_k(np.ones((2, 2)), np.ones((3, 2)), [0, 1], [0, 1, 2], ks=(0, 5))
    with pytest.raises(XBTError, match="unknown index"):
        search(np.ones((2, 2)), np.ones((3, 2)), 1, index="hnsw")


def test_flip_rates_and_gap_closure():
    base = np.array([1, 1, 0, 0, 1, 0], bool)
    new = np.array([1, 0, 1, 1, 1, 0], bool)
    f = flip_rates(base, new)
    assert f["pfr"] == pytest.approx(2 / 6) and f["nfr"] == pytest.approx(1 / 6)
    assert f["delta"] == pytest.approx(new.mean() - base.mean())
    assert gap_closure(0.4, 0.45, 0.5) == pytest.approx(0.5)
    assert gap_closure(0.4, 0.3, 0.5) == pytest.approx(-1.0)
    assert gap_closure(0.4, 0.45, 0.4) is None
    with pytest.raises(XBTError, match="same queries"):
        flip_rates(base, new[:3])


# ---------------------------------------------------------------------- evaluate() with tiny models


@pytest.fixture(scope="module")
def toy_small():
    images, captions = xbt.toy.test_split(10)
    return RetrievalDataset(images, captions, name="toy", split="test")


def random_adapter(new, old, seed=0, method="rand"):
    torch.manual_seed(seed)
    return Adapter(new, Projection(new.embed_dim, old.embed_dim, hidden=16), method=method, old=old)


def test_evaluate_numbers_match_independent_computation(old_new, toy_small):
    old, new = old_new
    adapter = random_adapter(new, old)
    report = xbt.evaluate(old, adapter, dataset=toy_small, ks=(1, 5), cache=False, verbose=False)
    ds = toy_small
    texts, owner, img_owner = ds.flat_captions(), ds.caption_owner(), np.arange(ds.n_images)
    o_img, o_txt = (
        embed_images(old, ds.images, cache=False, verbose=False),
        embed_texts(old, texts, cache=False, verbose=False),
    )
    n_img, n_txt = (
        embed_images(new, ds.images, cache=False, verbose=False),
        embed_texts(new, texts, cache=False, verbose=False),
    )
    a_img, a_txt = adapter.encode_image(ds.images), adapter.encode_text(texts)  # the adapter's own query path
    ks = (1, 5)
    expect = {
        "old": {
            "i2t": reference_hits(o_img, o_txt, img_owner, owner, ks),
            "t2i": reference_hits(o_txt, o_img, owner, img_owner, ks),
        },
        "new": {
            "i2t": reference_hits(n_img, n_txt, img_owner, owner, ks),
            "t2i": reference_hits(n_txt, n_img, owner, img_owner, ks),
        },
        "adp": {
            "i2t": reference_hits(a_img, o_txt, img_owner, owner, ks),
            "t2i": reference_hits(a_txt, o_img, owner, img_owner, ks),
        },
    }
    m = report.methods["rand"]
    for d in ("i2t", "t2i"):
        for k in ks:
            assert report.old_old[d][k] == pytest.approx(expect["old"][d][k].mean())
            assert report.new_new[d][k] == pytest.approx(expect["new"][d][k].mean())
            assert m.recall[d][k] == pytest.approx(expect["adp"][d][k].mean())
            base, new_hits = expect["old"][d][k], expect["adp"][d][k]
            assert m.pfr[d][k] == pytest.approx((~base & new_hits).mean())
            assert m.nfr[d][k] == pytest.approx((base & ~new_hits).mean())
            assert m.compatible[d][k] == (m.recall[d][k] > report.old_old[d][k])
            assert m.gap_closure[d][k] == gap_closure(report.old_old[d][k], m.recall[d][k], report.new_new[d][k])
    assert (report.n_images, report.n_captions, report.ks) == (10, 50, (1, 5))
    assert m.requires_old_encoder is False
    assert set(m.query_cost) == {"text", "image"} and all(v > 0 for v in m.query_cost.values())


def test_identity_upgrade_is_not_compatible_and_has_no_gap(old_new, toy_small):
    old, _ = old_new
    proj = Projection(old.embed_dim, old.embed_dim, hidden=0)
    with torch.no_grad():
        proj.linear.weight.copy_(torch.eye(old.embed_dim))
    same = Adapter(old, proj, method="identity")
    report = xbt.evaluate(old, same, dataset=toy_small, cache=False, verbose=False, query_cost=False)
    m = report.methods["identity"]
    for d in ("i2t", "t2i"):
        for k in report.ks:
            assert m.recall[d][k] == pytest.approx(report.old_old[d][k])
            assert m.pfr[d][k] == 0 and m.nfr[d][k] == 0
            assert m.compatible[d][k] is False
            assert m.gap_closure[d][k] is None
    assert not m.backward_compatible
    md = report.to_markdown()
    assert "- **identity**: backward compatible: **no**" in md


def test_several_methods_share_one_new_model_embedding(old_new, toy_small, monkeypatch):
    old, new = old_new
    calls = {"image": 0, "text": 0}
    real_image, real_text = new.encode_image, new.encode_text

    def count_image(images):
        calls["image"] += 1
        return real_image(images)

    def count_text(texts):
        calls["text"] += 1
        return real_text(texts)

    monkeypatch.setattr(new, "encode_image", count_image)
    monkeypatch.setattr(new, "encode_text", count_text)
    adapters = {"a": random_adapter(new, old, 0), "b": random_adapter(new, old, 1)}
    report = xbt.evaluate(old, adapters, dataset=toy_small, cache=False, verbose=False, query_cost=False)
    assert calls == {"image": 1, "text": 1}  # one batch each, shared by new→new and both methods
    assert [label for label, _ in report.rows()] == ["old→old", "new→old (a)", "new→old (b)", "new→new"]
    assert report.methods["a"].query_cost is None and report.methods["b"].info["method"] == "rand"


def test_plain_new_model_gives_new_new_only(old_new, toy_small):
    old, new = old_new
    report = xbt.evaluate(old, new.model, dataset=toy_small, ks=(1,), cache=False, verbose=False)
    assert report.methods == {}
    assert report.new_new is not None and [r for r, _ in report.rows()] == ["old→old", "new→new"]
    assert "backward compatible" not in report.to_markdown()


def test_lazy_gallery_is_embedded_in_chunks_with_the_same_result(old_new, tmp_path, monkeypatch):
    old, new = old_new
    make_karpathy(tmp_path, "flickr30k", {"test": 5})
    lazy = load_dataset("flickr30k", root=tmp_path)
    eager = RetrievalDataset(list(lazy.images), lazy.captions, "flickr30k", "test")
    monkeypatch.setattr(ev, "IMAGE_CHUNK", 2)
    adapter = random_adapter(new, old)
    a = xbt.evaluate(old, adapter, dataset=lazy, cache=False, verbose=False, query_cost=False)
    b = xbt.evaluate(old, adapter, dataset=eager, cache=False, verbose=False, query_cost=False)
    assert a.to_dict()["methods"] == b.to_dict()["methods"] and a.old_old == b.old_old and a.new_new == b.new_new


def test_evaluate_bad_inputs(old_new, toy_small):
    old, new = old_new
    wrong_dim = Adapter(new, Projection(new.embed_dim, 16, hidden=0), method="w")
    with pytest.raises(XBTError, match=r"adapter 'w' works with a 16-d old model.*tiny-old\) has 32-d embeddings"):
        xbt.evaluate(old, wrong_dim, dataset=toy_small, verbose=False)
    other_new = xbt.models.encoders.as_encoder(tiny_open_clip(48, seed=9), name="other-new")
    mixed = {"a": random_adapter(new, old), "b": random_adapter(other_new, old)}
    with pytest.raises(XBTError, match="different new models"):
        xbt.evaluate(old, mixed, dataset=toy_small, verbose=False)
    with pytest.raises(XBTError, match="upgraded is None"):
        xbt.evaluate(old, None, dataset=toy_small, verbose=False)
    with pytest.raises(XBTError, match="not an xbt.Adapter"):
        xbt.evaluate(old, {"x": new}, dataset=toy_small, verbose=False)
    stale = Adapter(
        new,
        Projection(new.embed_dim, old.embed_dim, hidden=0),
        method="stale",
        old=xbt.ModelRef(name="someone-else", embed_dim=old.embed_dim, fingerprint="0" * 24),
    )
    with pytest.raises(
        XBTError, match=r"old model given \(tiny-old, weights fingerprint \w+\).*'someone-else', fingerprint 0{24}"
    ):
        xbt.evaluate(old, stale, dataset=toy_small, ks=(1,), cache=False, verbose=False, query_cost=False)
    report = xbt.evaluate(
        old, stale, dataset=toy_small, ks=(1,), cache=False, verbose=False, query_cost=False, check_fingerprint=False
    )  # the explicit opt-out
    assert "stale" in report.methods


# ---------------------------------------------------------------------- the report


@pytest.fixture(scope="module")
def report(old_new, toy_small):
    old, new = old_new
    return xbt.evaluate(old, {"rand": random_adapter(new, old)}, dataset=toy_small, cache=False, verbose=False)


def test_report_dict_is_json_and_round_trips(report):
    d = report.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = Report.from_dict(json.loads(text))
    assert back.to_dict() == d
    assert back.to_markdown() == report.to_markdown()
    assert d["methods"]["rand"]["recall"]["i2t"].keys() == {"1", "5", "10"}
    assert d["backward_compatible"] == {"rand": report.methods["rand"].backward_compatible}


def test_report_markdown_table(report):
    md = report.to_markdown()
    header = next(line for line in md.splitlines() if line.startswith("| row"))
    assert header.split(" | ")[1:3] == ["needs old encoder at query", "query cost vs bare new"]
    assert "I2T R@10" in header and "T2I R@1" in header
    row = next(line for line in md.splitlines() if line.startswith("| new→old (rand)"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "no" and "text" in cells[2] and "×" in cells[2]
    assert cells[3] == f"{100 * report.methods['rand'].recall['i2t'][1]:.2f}"
    verdict = "yes" if report.methods["rand"].backward_compatible else "no"
    assert f"- **rand**: backward compatible: **{verdict}**" in md


def test_report_summary_fits_a_terminal(report):
    """The demo prints ``to_summary``: every line within the width, names whole, R@K and the verdict per row."""
    wide = report.to_summary(width=100)
    assert max(len(line) for line in wide.splitlines()) <= 100
    row = next(line for line in wide.splitlines() if line.startswith("rand "))
    cells = row.split()
    assert cells[1] == f"{100 * report.methods['rand'].recall['i2t'][1]:.2f}"
    assert cells[-1] == ("yes" if report.methods["rand"].backward_compatible else "no")
    assert len(cells) == 1 + 6 + 3  # name, R@1/5/10 both ways, two closures and the verdict
    narrow = report.to_summary(width=70)
    assert max(len(line) for line in narrow.splitlines()) <= 70
    assert "R@5" not in narrow and "I2T R@1" in narrow and "R@10" in narrow  # only the smallest and largest K
    assert any(line.startswith("old→old") for line in narrow.splitlines())


def test_report_plot_and_save(report, tmp_path):
    png = report.plot(tmp_path / "sub" / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = report.save(tmp_path / "rep")
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "report.png"]
    assert json.loads((out / "report.json").read_text()) == report.to_dict()
    assert (out / "report.md").read_text() == report.to_markdown()


# ---------------------------------------------------------------------- CLI


def save_local_dir(model, folder, embed_dim):
    """Save a conftest tiny open_clip model as an open_clip ``local-dir`` folder."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    cfg = {
        "model_cfg": {
            "embed_dim": embed_dim,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
            "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        },
        "preprocess_cfg": {"size": 32, "mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    return folder


def test_cli_eval_writes_json_markdown_and_png(tmp_path, capsys):
    from xbt.cli import main

    old_dir = save_local_dir(tiny_open_clip(32, seed=1), tmp_path / "old", 32)
    new_dir = save_local_dir(tiny_open_clip(48, seed=2), tmp_path / "new", 48)
    old = xbt.load_clip(f"local-dir:{old_dir}", device="cpu")
    new = xbt.load_clip(f"local-dir:{new_dir}", device="cpu")
    random_adapter(new, old, method="xbt").save_pretrained(tmp_path / "adapter")
    out = tmp_path / "out"
    args = [
        "eval",
        "--old",
        str(old_dir),
        "--adapter",
        str(tmp_path / "adapter"),
        "--dataset",
        "toy",
        "--limit",
        "6",
        "--ks",
        "1",
        "5",
        "--out",
        str(out),
        "--quiet",
        "--no-cache",
        "--no-query-cost",
    ]
    assert main(args + ["--new", str(new_dir)]) == 0
    printed = capsys.readouterr().out
    assert "| new→old (xbt)" in printed and "backward compatible" in printed
    data = json.loads((out / "report.json").read_text())
    assert data["n_images"] == 6 and data["ks"] == [1, 5] and list(data["methods"]) == ["xbt"]
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG" and (out / "report.md").read_text().startswith("###")
    # without --new, the new model named in the adapter's config is loaded
    assert main(args + ["--out", str(tmp_path / "out2")]) == 0
    assert json.loads((tmp_path / "out2" / "report.json").read_text())["methods"] == data["methods"]


def test_cli_errors_are_reported_not_raised(tmp_path, capsys):
    from xbt.cli import main

    assert main(["eval", "--old", "xbt-toy-old", "--dataset", "toy"]) == 2
    assert "give --adapter FOLDER" in capsys.readouterr().err
    old_dir = save_local_dir(tiny_open_clip(32, seed=1), tmp_path / "old", 32)
    assert (
        main(
            [
                "eval",
                "--old",
                str(old_dir),
                "--new",
                str(old_dir),
                "--dataset",
                "flickr30k",
                "--root",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "dataset_flickr30k.json" in capsys.readouterr().err
    assert main([]) == 2


def test_a_ceiling_row_and_ceiling_closure(old_new):
    from xbt.evaluation.report import closure

    old, new = old_new
    adapter = xbt.fit(old, new, xbt.toy.text_corpus(200), epochs=1, verbose=False)
    plain = xbt.evaluate(old, {"s1": adapter}, dataset="toy", limit=40, query_cost=False, verbose=False)
    ceiling = {d: {k: min(1.0, plain.old_old[d][k] + 0.1) for k in plain.ks} for d in ("i2t", "t2i")}
    report = xbt.evaluate(
        old, {"s1": adapter}, dataset="toy", limit=40, query_cost=False, verbose=False, ceiling=ceiling
    )
    m = report.methods["s1"]
    for d in ("i2t", "t2i"):
        for k in report.ks:
            assert m.ceiling_closure[d][k] == pytest.approx(
                closure(report.old_old[d][k], m.recall[d][k], ceiling[d][k])
            )
    assert [label for label, _ in report.rows()][-2] == "ceiling (frozen old gallery)"
    md = report.to_markdown()
    assert "ceiling closure" in md and "| ceiling (frozen old gallery) |" in md
    again = Report.from_dict(json.loads(report.to_json()))
    assert again.ceiling == report.ceiling and again.methods["s1"].ceiling_closure == m.ceiling_closure
    assert closure(0.2, 0.3, 0.2) is None and closure(0.2, 0.25, 0.3) == pytest.approx(0.5)
    with pytest.raises(XBTError, match="the ceiling lacks Recall@K"):
        report.set_ceiling({"i2t": {1: 0.5}})


# the regressions this file guards (each failed on the code before its fix)


def test_evaluate_refuses_split_and_root_for_a_dataset_object(stage1_adapter, old_new, tmp_path):
    """``evaluate`` ignored ``split=`` / ``root=`` when given a dataset object."""
    images, captions = xbt.toy.test_split(4)
    ds = RetrievalDataset(images, captions, "toy", "test")
    for extra in ({"split": "val"}, {"root": tmp_path}, {"source": "hf"}):
        with pytest.raises(XBTError, match=rf"\['{next(iter(extra))}'\] only apply when dataset is a name"):
            xbt.evaluate(old_new[0], stage1_adapter, dataset=ds, verbose=False, query_cost=False, **extra)
    report = xbt.evaluate(
        old_new[0], stage1_adapter, dataset=ds, limit=2, cache=False, verbose=False, query_cost=False
    )
    assert report.n_images == 2


def test_query_cost_is_the_median_of_paired_rounds(monkeypatch):
    """The query-cost column pairs a bare and an adapter call per round and takes the median ratio, so a
    machine whose load changes between rounds, or spikes in one call, does not move the figure."""
    from types import SimpleNamespace

    from xbt.evaluation import evaluate as ev

    clock = SimpleNamespace(now=0.0, calls=[])
    # load per call: steady, but round 4's bare call ran alone on the machine (a best-of-N would take it)
    load = iter([2, 2, 2, 2, 2, 2, 2, 2, 0.5, 2, 2, 2, 2, 2] * 2)

    def timed(kind, cost):
        def call(items):
            if len(items) > 2:  # not the warm-up
                clock.calls.append(kind)
                clock.now += cost * next(load)
            return None

        return call

    new = SimpleNamespace(encode_text=timed("bare", 1.0), encode_image=timed("bare", 1.0))
    adapter = SimpleNamespace(new=new, encode_text=timed("adapter", 1.25), encode_image=timed("adapter", 1.25))
    ds = SimpleNamespace(images=list(range(10)), n_images=10)
    monkeypatch.setattr(ev, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    cost = ev._query_cost(adapter, ds, [f"t{i}" for i in range(10)])
    assert cost == {"text": 1.25, "image": 1.25}
    first = clock.calls[: 2 * ev.COST_ROUNDS : 2]  # which path ran first in each round: alternating
    assert first[:4] == ["bare", "adapter", "bare", "adapter"]
