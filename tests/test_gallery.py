"""The mixed old/new gallery, its merge, the backfill planner and the resumable backfill job, on the toy CLIPs."""

import copy
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import xbt
from xbt.adapters.config import ModelRef
from xbt.cli.gallery import explain
from xbt.core.hashing import image_ids
from xbt.evaluation.search import search
from xbt.gallery import backfill as bf
from xbt.gallery.calibration import ScoreCalibration, merge_scores
from xbt.gallery.calibration_fit import FUSE_WEIGHTS, calibration_set, fit_calibration, fit_gallery_calibration
from xbt.gallery.mixed import MixedGallery
from xbt.gallery.pair_vectors import layout_verdict, pair_vectors
from xbt.gallery.planner import DisagreementModel, budget_count, plan_order
from xbt.models.embedding import embed_images, embed_texts

ROOT = Path(__file__).resolve().parents[1]
N = 96


@pytest.fixture(scope="module")
def world():
    old, new = xbt.toy.load_clips(device="cpu")
    adapter = xbt.fit(old, new, xbt.toy.text_corpus(3000), epochs=3, verbose=False)
    images, caps = xbt.toy.test_split(N)
    texts = [c[0] for c in caps]
    vec = {
        "old_img": embed_images(old, images, verbose=False).numpy(),
        "new_img": embed_images(new, images, verbose=False).numpy(),
        "new_txt": embed_texts(new, texts, verbose=False).numpy(),
    }
    vec["ad_txt"] = adapter.from_new_embeddings(torch.from_numpy(vec["new_txt"]), "text").numpy()
    return {"old": old, "new": new, "adapter": adapter, "images": images, "texts": texts, **vec}


def image_gallery(w, store="faiss", calibration=None):
    g = MixedGallery(ModelRef.of(w["old"]), w["new"].embed_dim, "image", store=store, calibration=calibration)
    g.add_old(w["old_img"])
    return g


def saved_gallery(w, folder):
    return image_gallery(w).save(folder)


# ---------------------------------------------------------------------- merge


def test_the_ends_of_a_backfill_are_the_adapter_search_and_the_new_model_search(world):
    g = image_gallery(world, calibration=ScoreCalibration(scale=0.5, shift=0.3))
    _, ids0 = g.search(world["new_txt"], world["ad_txt"], k=10)
    np.testing.assert_array_equal(ids0, search(world["ad_txt"], world["old_img"], 10)[1])
    g.set_new(np.arange(N), world["new_img"])
    _, ids1 = g.search(world["new_txt"], world["ad_txt"], k=10)
    np.testing.assert_array_equal(ids1, search(world["new_txt"], world["new_img"], 10)[1])
    g.rollback()
    np.testing.assert_array_equal(g.search(world["new_txt"], world["ad_txt"], k=10)[1], ids0)


def test_the_calibrated_merge_equals_a_brute_force_merge_of_both_parts(world):
    cal = ScoreCalibration(scale=0.4, shift=0.35)
    g = image_gallery(world, calibration=cal)
    chosen = np.arange(0, N, 3)
    g.set_new(chosen, world["new_img"][chosen])
    scores, ids = g.search(world["new_txt"], world["ad_txt"], k=10)
    in_new = np.zeros(N, bool)
    in_new[chosen] = True
    full = np.where(
        in_new, world["new_txt"] @ world["new_img"].T, cal.scale * (world["ad_txt"] @ world["old_img"].T) + cal.shift
    )
    expect = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, expect)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expect, 1), atol=1e-5)


def test_interleave_alternates_the_parts_at_half_backfilled(world):
    g = image_gallery(world)
    g.set_new(np.arange(0, N, 2), world["new_img"][::2])
    _, ids = g.search(world["new_txt"], world["ad_txt"], k=6, merge="interleave")
    in_new = g.in_new[ids]
    assert (in_new[:, ::2] != in_new[:, 1::2]).all()


def test_the_fraction_aware_normalised_merge_equals_its_formula_over_the_whole_gallery(world):
    # two maps, at 20 % and 60 % backfilled: between them the gallery interpolates (at() is checked
    # at 40 %, the search at 37.5 %), and the per-query normalisation must use each part's
    # top-``depth`` scores over the WHOLE part
    cal = ScoreCalibration(
        points=[[0.2, 0.3, 0.4, 0.0], [0.6, 0.5, 0.2, 1.0]], temperature_new=0.03, temperature_old=0.05, depth=8
    )
    assert cal.at(0.4) == pytest.approx((0.4, 0.3, 0.5))
    assert cal.at(0.05) == pytest.approx((0.3, 0.4, 0.0)) and cal.at(0.9) == pytest.approx((0.5, 0.2, 1.0))
    g = image_gallery(world, calibration=cal)
    chosen = plan_order(world["old_img"], "random", seed=3)[: 3 * N // 8]
    g.set_new(chosen, world["new_img"][chosen])
    scores, ids = g.search(world["new_txt"], world["ad_txt"], k=5)
    w = (3 / 8 - 0.2) / 0.4  # 37.5 % backfilled: that share of the way from the 20 % map to the 60 % map
    scale, shift0, norm = 0.3 + 0.2 * w, 0.4 - 0.2 * w, w
    in_new = np.zeros(N, bool)
    in_new[chosen] = True
    s_new, s_old = world["new_txt"] @ world["new_img"].T, world["ad_txt"] @ world["old_img"].T

    def lse_top(s, member, t):
        top = np.sort(np.where(member, s, -np.inf), axis=1)[:, ::-1][:, :8] / t
        return np.log(np.exp(top).sum(1))

    shift = 0.03 * (lse_top(s_new, in_new, 0.03) - lse_top(s_old, ~in_new, 0.05))
    full = np.where(in_new, s_new, scale * s_old + shift0 + norm * shift[:, None])
    # the top-5 merged scores, and each returned id carries its own formula score (float32 near-ties may swap ids)
    np.testing.assert_allclose(scores, -np.sort(-full, axis=1)[:, :5], atol=1e-4)
    np.testing.assert_allclose(np.take_along_axis(full, ids, 1), scores, atol=1e-4)


def test_a_backfilled_item_adds_its_old_space_score_where_the_calibration_fuses(world):
    """Until cutover a backfilled item keeps its old vector: with ``fuse`` weight w its merged score is
    (1 - w) x its new score + w x its mapped old score (the same map as the old part's), and the result changes."""
    points = [[0.2, 0.5, 0.1, 0.0], [0.6, 0.5, 0.1, 0.0]]
    chosen = plan_order(world["old_img"], "random", seed=3)[: N // 2]
    in_new = np.zeros(N, bool)
    in_new[chosen] = True
    s_new, s_old = world["new_txt"] @ world["new_img"].T, world["ad_txt"] @ world["old_img"].T
    found = {}
    for w in (0.0, 0.4):
        g = image_gallery(world, calibration=ScoreCalibration(points=points, fuse=[[0.2, w], [0.6, w]]))
        g.set_new(chosen, world["new_img"][chosen])
        scores, ids = g.search(world["new_txt"], world["ad_txt"], k=5)
        mapped = 0.5 * s_old + 0.1
        full = np.where(in_new, (1 - w) * s_new + w * mapped, mapped)
        np.testing.assert_allclose(np.take_along_axis(full, ids, 1), scores, atol=1e-4)  # each id, its formula
        found[w] = ids
        assert ("their kept old vectors too" in explain(g)[1]) == (w > 0)  # search --explain says so
    assert (found[0.0] != found[0.4]).any()


def test_every_item_backfilled_before_cutover_still_fuses_where_the_calibration_has_a_weight_at_100(world):
    points = [[0.5, 0.5, 0.1, 0.0]]
    s_new, s_old = world["new_txt"] @ world["new_img"].T, world["ad_txt"] @ world["old_img"].T
    everything = np.arange(N)
    for fuse, w in (([[0.5, 0.3], [1.0, 0.4]], 0.4), ([[0.5, 0.3]], 0.0)):  # the second: a map saved before
        g = image_gallery(world, calibration=ScoreCalibration(points=points, fuse=fuse))
        g.set_new(everything, world["new_img"])
        scores, ids = g.search(world["new_txt"], world["ad_txt"], k=5)
        full = (1 - w) * s_new + w * (0.5 * s_old + 0.1)
        np.testing.assert_allclose(np.take_along_axis(full, ids, 1), scores, atol=1e-4)
        assert np.array_equal(ids, search(world["new_txt"], world["new_img"], 5)[1]) == (w == 0)
        assert ("100% (before cutover): fuse 0.40" in g.calibration.summary()) == (w > 0)  # explain prints it
        g.cutover()  # the old vectors are gone: the new model alone, whatever the weight
        assert np.array_equal(
            g.search(world["new_txt"], None, k=5)[1], search(world["new_txt"], world["new_img"], 5)[1]
        )


def test_a_gallery_searched_with_the_old_models_queries_needs_no_old_model_once_nothing_is_old(world):
    g = image_gallery(world, calibration=ScoreCalibration(fuse=[[0.5, 0.3]]))
    g.use_old_queries(world["adapter"], force="old model")
    with pytest.raises(xbt.XBTError, match="pass old="):
        g.search_with(world["adapter"], ["a red circle"], k=3)
    g.set_new(np.arange(N), world["new_img"])
    assert g.search_with(world["adapter"], ["a red circle"], k=3)[1].shape == (1, 3)  # nothing old, no fusion
    g.calibration = ScoreCalibration(fuse=[[0.5, 0.3], [1.0, 0.2]])  # the old model's scores fused at 100 %
    with pytest.raises(xbt.XBTError, match="pass old="):
        g.search_with(world["adapter"], ["a red circle"], k=3)
    assert g.search_with(world["adapter"], ["a red circle"], k=3, old=world["old"])[1].shape == (1, 3)


def test_bad_calibration_points_are_refused():
    with pytest.raises(xbt.XBTError, match="calibration point"):
        ScoreCalibration(points=[[0.5, -1.0, 0.0, 0.5]])
    with pytest.raises(xbt.XBTError, match="increasing order"):
        ScoreCalibration(points=[[0.5, 1.0, 0.0, 0.5], [0.2, 1.0, 0.0, 0.5]])
    with pytest.raises(xbt.XBTError, match=r"fuse weight is \[fraction in \[0, 1\], weight in \[0, 1\]\]"):
        ScoreCalibration(fuse=[[0.5, 1.5]])
    with pytest.raises(xbt.XBTError, match="fuse weights must have distinct fractions"):
        ScoreCalibration(fuse=[[0.5, 0.2], [0.5, 0.3]])
    saved = {k: v for k, v in ScoreCalibration(points=[[0.5, 1.0, 0.0, 0.5]]).to_dict().items() if k != "fuse"}
    assert ScoreCalibration.from_dict(saved).fuse_at(0.5) == 0.0  # a file saved before fusion: none


def test_fit_calibration_beats_its_starting_map_on_the_pairs_it_was_fitted_on(world):
    n = N
    target = np.eye(n, dtype=bool)
    args = (world["new_txt"], world["ad_txt"], world["new_img"], world["old_img"], target)
    cal = fit_calibration(*args, fractions=(0.25, 0.5), mixes=4)
    assert [p[0] for p in cal.points] == [0.25, 0.5] and cal.temperature_new > 0 and cal.temperature_old > 0
    assert [f for f, _ in cal.fuse] == [0.25, 0.5, 1.0] and all(w in FUSE_WEIGHTS for _, w in cal.fuse)
    s_new, s_old = args[0] @ args[2].T, args[1] @ args[3].T

    def in_new_of(mask):
        return np.broadcast_to(mask, s_new.shape)

    def hits(calibration, fraction):  # summed R@1 + R@10 over a few random mixes at that fraction
        total = 0.0
        for seed in range(4):
            mask = np.random.default_rng(seed).random(n) < fraction
            merged = merge_scores(
                s_old,
                s_new,
                in_new_of(mask),
                "calibrated",
                calibration,
                n_old=int((~mask).sum()),
                n_new=int(mask.sum()),
            )
            rank = (merged > merged[np.arange(n), np.arange(n)][:, None]).sum(1)
            total += (rank < 1).mean() + (rank < 10).mean()
        return total

    start = ScoreCalibration(scale=cal.scale, shift=cal.shift)
    assert sum(hits(cal, f) for f in (0.25, 0.5)) >= sum(hits(start, f) for f in (0.25, 0.5))
    assert ScoreCalibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    with pytest.raises(xbt.XBTError, match="strictly between 0 and 1"):
        fit_calibration(*args, fractions=(0.0, 0.5))


def test_the_calibration_set_from_five_caption_pairs_is_shaped_like_each_gallery():
    rows = xbt.toy.pair_list(4, captions_per_image=5)
    ids = image_ids([im for im, _ in rows])
    assert ids.tolist() == [0] * 5 + [5] * 5 + [10] * 5 + [15] * 5
    rng = np.random.default_rng(0)
    vec = {
        f"{k}_{m}": rng.normal(size=(20, 8)).astype(np.float32) for k in ("new", "ad", "old") for m in ("img", "txt")
    }
    q_new, q_ad, g_new, g_old, target = calibration_set(vec, ids, "text")  # image queries -> a caption gallery
    assert q_new.shape == (4, 8) and g_old.shape == (20, 8) and (q_ad == vec["ad_img"][[0, 5, 10, 15]]).all()
    assert (target == np.repeat(np.eye(4, dtype=bool), 5, axis=1)).all()  # five right captions per image
    q_new, q_ad, g_new, g_old, target = calibration_set(vec, ids, "image")  # caption queries -> an image gallery
    assert q_new.shape == (20, 8) and g_new.shape == (4, 8) and (g_old == vec["old_img"][[0, 5, 10, 15]]).all()
    assert (
        target == np.repeat(np.eye(4, dtype=bool), 5, axis=0)
    ).all()  # each image once, one right image per caption
    with pytest.raises(xbt.XBTError, match="one id per pair row"):
        calibration_set(vec, ids[:10], "text")
    with pytest.raises(xbt.XBTError, match="'image' or 'text'"):
        calibration_set(vec, ids, "audio")


@pytest.mark.parametrize("engine", ["qdrant", "lancedb"])
def test_faiss_and_the_vector_databases_give_the_same_top10(world, engine):
    galleries = [image_gallery(world, store) for store in ("faiss", engine)]
    chosen = plan_order(world["old_img"], "random", seed=1)[: int(0.4 * N)]
    for g in galleries:
        g.calibration = ScoreCalibration(scale=0.4, shift=0.35)
        g.set_new(chosen, world["new_img"][chosen])
    for merge in ("calibrated", "naive", "interleave"):
        (s_f, i_f), (s_q, i_q) = (g.search(world["new_txt"], world["ad_txt"], k=10, merge=merge) for g in galleries)
        np.testing.assert_array_equal(i_f, i_q)
        np.testing.assert_allclose(s_f, s_q, atol=1e-5)


def test_an_adapter_for_another_old_model_is_refused_by_fingerprint(world):
    other_old = copy.deepcopy(world["old"])
    with torch.no_grad():
        for p in other_old.model.parameters():
            p.add_(0.01)
    other_old.refresh_fingerprint()
    assert other_old.fingerprint != world["old"].fingerprint
    g = MixedGallery(ModelRef.of(other_old), world["new"].embed_dim, "image")
    g.add_old(embed_images(other_old, world["images"][:8], verbose=False))
    with pytest.raises(xbt.XBTError, match="fingerprint"):
        g.search_with(world["adapter"], ["a red circle"])
    assert g.search_with(world["adapter"], ["a red circle"], check_fingerprint=False)[1].shape == (1, 8)
    mine = image_gallery(world)
    assert mine.search_with(world["adapter"], ["a red circle"], k=3)[1].shape == (1, 3)


# ---------------------------------------------------------------------- planner


def test_budgets_and_plans(world):
    assert budget_count(0.25, 100) == 25 and budget_count(30, 100) == 30 and budget_count(500, 100) == 100
    with pytest.raises(xbt.XBTError, match="budget"):
        budget_count(1.5, 100)
    rng = np.random.default_rng(0)
    adapted = (
        world["old_img"]
        + 0.3 * rng.standard_normal(world["old_img"].shape).astype(np.float32) * world["old_img"][:, :1]
    )
    adapted /= np.linalg.norm(adapted, axis=1, keepdims=True)
    model = DisagreementModel.fit(world["old_img"], adapted)
    for plan in ("random", "uncertainty", "density", "spread"):
        order = plan_order(world["old_img"], plan, model=model)
        assert sorted(order.tolist()) == list(range(N))
    pred = model.predict(world["old_img"])
    assert (np.diff(pred[plan_order(world["old_img"], "uncertainty", model=model)]) <= 1e-6).all()
    with pytest.raises(xbt.XBTError, match="DisagreementModel"):
        plan_order(world["old_img"], "uncertainty")


# ---------------------------------------------------------------------- the backfill job


def final_state(folder):
    g = bf.open_gallery(folder)
    return g.in_new, g.store.vectors("new", np.flatnonzero(g.in_new))


def test_a_backfill_interrupted_between_writes_resumes_to_the_same_gallery(world, tmp_path, monkeypatch):
    order = plan_order(world["old_img"], "random", seed=3)
    ref, broken = saved_gallery(world, tmp_path / "ref"), saved_gallery(world, tmp_path / "broken")
    full = bf.BackfillJob(ref, world["new"], world["images"], order=order, batch_size=16).run(0.5, verbose=False)
    assert full == {"embedded": 48, "adopted": 0, "repaired": 0, "done": 48, "target": 48}

    calls = {"n": 0}
    real = bf.write_json

    def failing(path, obj):  # call 1 starts the manifest, call k+1 commits batch k: fail committing batch 1
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(path, obj)

    monkeypatch.setattr(bf, "write_json", failing)
    with pytest.raises(OSError):
        bf.BackfillJob(broken, world["new"], world["images"], order=order, batch_size=16).run(0.5, verbose=False)
    monkeypatch.setattr(bf, "write_json", real)
    assert bf.read_manifest(broken)["batches"][-1]["index"] == 0  # batch 1's file exists, unrecorded
    resumed = bf.BackfillJob(broken, world["new"], world["images"], batch_size=16).run(0.5, verbose=False)
    assert resumed["adopted"] == 16 and resumed["embedded"] == 16  # 16 + 16 + 16 = 48: nothing embedded twice
    (in_a, v_a), (in_b, v_b) = final_state(ref), final_state(broken)
    np.testing.assert_array_equal(in_a, in_b)
    np.testing.assert_array_equal(v_a, v_b)


def test_a_killed_backfill_process_resumes_to_the_same_gallery(world, tmp_path):
    order = plan_order(world["old_img"], "random", seed=4)
    ref, killed = saved_gallery(world, tmp_path / "ref"), saved_gallery(world, tmp_path / "killed")
    np.save(tmp_path / "order.npy", order)
    bf.BackfillJob(ref, world["new"], world["images"], order=order, batch_size=16).run(1.0, verbose=False)
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, signal, numpy as np, torch, xbt
        torch.set_num_threads({torch.get_num_threads()})  # the fingerprint's float sum depends on the thread count
        from xbt.gallery import backfill as bf
        old, new = xbt.toy.load_clips(device="cpu")
        images, _ = xbt.toy.test_split({N})
        real, calls = bf.write_json, [0]
        def write_then_die(path, obj):  # killed after batch 2's file is written, before the manifest records it
            calls[0] += 1
            if calls[0] == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, obj)
        bf.write_json = write_then_die
        bf.BackfillJob({str(killed)!r}, new, images, order=np.load({str(tmp_path / "order.npy")!r}),
        batch_size=16).run(1.0, verbose=False)
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert len(bf.read_manifest(killed)["batches"]) == 2
    resumed = bf.BackfillJob(killed, world["new"], world["images"], batch_size=16).run(1.0, verbose=False)
    assert resumed["adopted"] == 16 and resumed["embedded"] == N - 48
    (in_a, v_a), (in_b, v_b) = final_state(ref), final_state(killed)
    assert in_a.all() and in_b.all()
    np.testing.assert_array_equal(v_a, v_b)


def test_a_corrupt_batch_file_is_refused_and_repair_re_embeds_it(world, tmp_path):
    folder = saved_gallery(world, tmp_path / "g")
    bf.BackfillJob(folder, world["new"], world["images"], batch_size=32).run(1.0, verbose=False)
    before = final_state(folder)[1]
    batch = folder / bf.BACKFILL_DIR / bf.batch_name(1)
    data = bytearray(batch.read_bytes())
    data[-5] ^= 0xFF
    batch.write_bytes(bytes(data))
    with pytest.raises(xbt.XBTError, match="corrupt.*repair"):
        bf.open_gallery(folder)
    with pytest.raises(xbt.XBTError, match="corrupt"):
        bf.BackfillJob(folder, world["new"], world["images"]).run(1.0, verbose=False)
    stats = bf.BackfillJob(folder, world["new"], world["images"]).run(1.0, repair=True, verbose=False)
    assert stats["repaired"] == 32 and stats["embedded"] == 0
    np.testing.assert_allclose(final_state(folder)[1], before, atol=1e-6)


def test_a_second_job_is_refused_while_one_holds_the_lock(world, tmp_path):
    folder = saved_gallery(world, tmp_path / "g")
    with bf.job_lock(folder / bf.BACKFILL_DIR):
        with pytest.raises(xbt.XBTError, match="another backfill job"):
            bf.BackfillJob(folder, world["new"], world["images"]).run(0.5, verbose=False)
    assert bf.BackfillJob(folder, world["new"], world["images"]).run(0.25, verbose=False)["done"] == 24


def test_another_new_model_cannot_resume_a_backfill(world, tmp_path):
    folder = saved_gallery(world, tmp_path / "g")
    bf.BackfillJob(folder, world["new"], world["images"], batch_size=16).run(16, verbose=False)
    other = copy.deepcopy(world["new"])
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(0.01)
    other.refresh_fingerprint()
    with pytest.raises(xbt.XBTError, match="started with new model"):
        bf.BackfillJob(folder, other, world["images"]).run(1.0, verbose=False)


def test_rollback_until_cutover(world, tmp_path):
    folder = saved_gallery(world, tmp_path / "g")
    job = bf.BackfillJob(folder, world["new"], world["images"], batch_size=32)
    job.run(0.5, verbose=False)
    with pytest.raises(xbt.XBTError, match="finish the backfill"):
        bf.cutover(folder)
    assert bf.rollback(folder) is not None
    assert not bf.open_gallery(folder).in_new.any()
    bf.BackfillJob(folder, world["new"], world["images"], batch_size=32).run(1.0, verbose=False)
    bf.cutover(folder)
    g = bf.open_gallery(folder)
    assert g.in_new.all() and not g.store.has_old
    with pytest.raises(xbt.XBTError, match="cannot roll back"):
        bf.rollback(folder)
    _, ids = g.search(world["new_txt"], world["ad_txt"], k=5)
    np.testing.assert_array_equal(ids, search(world["new_txt"], world["new_img"], 5)[1])


def test_gallery_json_records_models_and_spaces(world, tmp_path):
    folder = saved_gallery(world, tmp_path / "g")
    bf.BackfillJob(folder, world["new"], world["images"], batch_size=16).run(0.25, verbose=False)
    meta = json.loads((folder / "gallery.json").read_text())
    assert meta["old_model"]["fingerprint"] == world["old"].fingerprint
    manifest = bf.read_manifest(folder)
    assert manifest["new_model"]["fingerprint"] == world["new"].fingerprint
    g = bf.open_gallery(folder)
    assert g.in_new.sum() == sum(b["count"] for b in manifest["batches"]) == 24
    assert dataclasses.asdict(g.new_ref)["fingerprint"] == world["new"].fingerprint
    shutil.rmtree(folder)


def test_the_gallery_cli_builds_backfills_and_searches(world, tmp_path, capsys):
    from xbt.cli import main

    adapter_dir = world["adapter"].save_pretrained(tmp_path / "adapter")
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(world["texts"][:40]) + "\n")
    gallery = tmp_path / "g"
    base = ["--gallery", str(gallery), "--adapter", str(adapter_dir), "--quiet"]
    pairs = tmp_path / "pairs"
    xbt.toy.pairs(12, captions_per_image=5).save_to_disk(str(pairs))
    assert (
        main(["gallery", "build", *base, "--old", "xbt-toy-old", "--texts", str(captions), "--pairs", str(pairs)]) == 0
    )
    # a caption gallery: each of the 12 pair images queries all 60 captions
    assert json.loads((gallery / "gallery.json").read_text())["calibration"]["source"].startswith(
        "fitted on 12 queries x 60 items"
    )
    assert main(["gallery", "backfill", *base, "--budget", "10", "--batch-size", "4", "--plan", "spread"]) == 2
    assert "--pairs" in capsys.readouterr().err
    assert (
        main(
            [
                "gallery",
                "backfill",
                *base,
                "--budget",
                "10",
                "--batch-size",
                "4",
                "--plan",
                "spread",
                "--pairs",
                str(pairs),
            ]
        )
        == 0
    )
    assert "10 of 40 items in the new space" in capsys.readouterr().out
    assert bf.read_manifest(gallery)["plan"] == "spread"
    assert main(["gallery", "backfill", *base, "--budget", "lots"]) == 2
    assert "--budget must be" in capsys.readouterr().err
    image = tmp_path / "q.png"
    world["images"][0].save(image)
    assert main(["gallery", "search", *base, "--query-image", str(image), "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("item ") == 3 and ("new" in out or "old" in out)
    assert main(["gallery", "search", *base, "--query", "a red circle"]) == 2
    assert "caption gallery" in capsys.readouterr().err
    assert main(["gallery", "rollback", "--gallery", str(gallery)]) == 0
    assert not bf.open_gallery(gallery).in_new.any()


def test_a_gallery_judges_the_adapter_on_pairs_laid_out_as_it_is(world):
    pairs = xbt.toy.pair_list(60, seed=1, captions_per_image=5)
    v, ids = pair_vectors(world["adapter"], world["old"], ([im for im, _ in pairs], [c for _, c in pairs]))
    judged = layout_verdict(v, ids, "image")  # each image query is right on any of its five captions
    assert judged.modality == "image" and judged.n == 60 and "pairs (5.0 captions each)" in judged.sentence()
    assert layout_verdict(v, ids, "text") is None  # a caption has one right image in any layout: the fit judged it
    same = layout_verdict({**v, "ad_img": v["old_img"]}, ids, "image")  # the old model's queries against themselves
    assert same.gain == 0 and same.verdict == "within noise"
    noise = np.random.default_rng(0).standard_normal(v["ad_img"].shape).astype(np.float32)
    bad = layout_verdict({**v, "ad_img": noise / np.linalg.norm(noise, axis=1, keepdims=True)}, ids, "image")
    assert bad.verdict == "not backward compatible"
    # the gallery decides on it, and says what the fit's own held-out pairs said (a stage-1 adapter: nothing)
    g = MixedGallery(ModelRef.of(world["old"]), world["new"].embed_dim, "text")
    reason = g.use_old_queries(world["adapter"], verdict=bad)
    assert (
        g.old_queries == "old model" and "gallery's pairs" in reason and "fit's held-out pairs: not measured" in reason
    )
    assert g.use_old_queries(world["adapter"], verdict=same) and g.old_queries == "adapter"
    assert layout_verdict({k: x[:245] for k, x in v.items()}, ids[:245], "image") is None  # 49 images: too few


def test_the_gallery_cli_judges_image_queries_on_its_own_pairs(world, tmp_path, capsys):
    from xbt.cli import main

    adapter_dir = world["adapter"].save_pretrained(tmp_path / "adapter")
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(world["texts"][:40]) + "\n")
    pairs = tmp_path / "pairs"
    xbt.toy.pairs(60, seed=1, captions_per_image=5).save_to_disk(str(pairs))
    base = ["gallery", "build", "--adapter", str(adapter_dir), "--old", "xbt-toy-old", "--quiet"]
    assert main([*base, "--gallery", str(tmp_path / "g"), "--texts", str(captions), "--pairs", str(pairs)]) == 0
    reason = json.loads((tmp_path / "g" / "gallery.json").read_text())["old_queries"]["reason"]
    assert "60 images of the gallery's pairs (5.0 captions each)" in reason
    assert "on its fit's held-out pairs: not measured" in reason and reason in capsys.readouterr().out
    # an image gallery: a caption has one right image in any layout, so the adapter's own verdict stands
    images = tmp_path / "images"
    images.mkdir()
    for i, im in enumerate(world["images"][:20]):
        im.save(images / f"{i}.png")
    assert main([*base, "--gallery", str(tmp_path / "gi"), "--images", str(images), "--pairs", str(pairs)]) == 0
    reason = json.loads((tmp_path / "gi" / "gallery.json").read_text())["old_queries"]["reason"]
    assert "gallery's pairs" not in reason and "not measured" in reason


def test_the_old_part_can_be_searched_with_the_old_models_queries(world, tmp_path, capsys):
    from xbt.cli import main

    # a stage-1 adapter has no held-out verdict: the adapter's queries, unless asked otherwise
    g = MixedGallery(ModelRef.of(world["old"]), world["new"].embed_dim, "image")
    g.add_old(world["old_img"], items=world["images"])
    assert "not measured" in g.use_old_queries(world["adapter"]) and g.old_queries == "adapter"
    assert "as asked" in g.use_old_queries(world["adapter"], force="old model")
    folder = g.save(tmp_path / "g")
    assert json.loads((folder / "gallery.json").read_text())["old_queries"]["path"] == "old model"
    assert bf.open_gallery(folder).old_queries == "old model"
    _, ids = g.search_with(world["adapter"], world["texts"][:8], k=5, old=world["old"])
    old_txt = embed_texts(world["old"], world["texts"][:8], verbose=False).numpy()
    np.testing.assert_array_equal(ids, search(old_txt, world["old_img"], 5)[1])  # all old: exactly old->old
    # a gallery.json written before the choice was recorded searches with the adapter, as it did
    meta = json.loads((folder / "gallery.json").read_text())
    del meta["old_queries"]
    (folder / "gallery.json").write_text(json.dumps(meta))
    assert bf.open_gallery(folder).old_queries == "adapter"
    # the command line: build with the old model's queries, search says what it does and why
    adapter_dir = world["adapter"].save_pretrained(tmp_path / "adapter")
    images = tmp_path / "images"
    images.mkdir()
    for i, im in enumerate(world["images"][:12]):
        im.save(images / f"{i:02d}.png")
    base = ["--gallery", str(tmp_path / "cli"), "--adapter", str(adapter_dir), "--quiet"]
    build = ["gallery", "build", *base, "--old", "xbt-toy-old", "--images", str(images)]
    assert main([*build, "--old-queries", "old-model"]) == 0
    assert "the old model's queries, as asked" in capsys.readouterr().out
    assert main(["gallery", "search", *base, "--query", world["texts"][0], "-k", "3", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "explain: 12 old-space items searched with the OLD model's own queries" in out
    assert "explain: 0 backfilled items" in out and out.count("item ") == 3
    with pytest.raises(SystemExit):
        main([*build, "--old-queries", "sometimes"])
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err


def test_a_calibration_fitted_for_another_adapters_queries_warns_when_served(world, tmp_path):
    pairs = xbt.toy.pair_list(40, seed=2, captions_per_image=5)
    v, ids = pair_vectors(world["adapter"], world["old"], ([im for im, _ in pairs], [c for _, c in pairs]))
    g = image_gallery(world)
    g.calibration = fit_gallery_calibration(g, world["adapter"], v, ids)
    assert g.calibration.fitted_for == world["adapter"].adapter_id()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the adapter the map was fitted for: no warning
        g.search_with(world["adapter"], ["a red circle"], k=3)
    other = xbt.fit(world["old"], world["new"], xbt.toy.text_corpus(300), epochs=1, verbose=False)
    with pytest.warns(UserWarning, match="fitted for the queries of adapter .* not of this one"):
        g.search_with(other, ["a red circle"], k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # merges that read no map say nothing
        g.search_with(other, ["a red circle"], k=3, merge="interleave")
    # the record survives a save, and a gallery.json from before it (no fitted_for) loads and never warns
    folder = g.save(tmp_path / "g")
    assert bf.open_gallery(folder).calibration.fitted_for == world["adapter"].adapter_id()
    older = ScoreCalibration.from_dict({k: x for k, x in g.calibration.to_dict().items() if k != "fitted_for"})
    assert older.fitted_for is None
    older.warn_if_fitted_for_other(other.adapter_id())  # nothing recorded: nothing to say
    # where the old part is searched with the OLD model's own queries, the map is fitted for those
    g.use_old_queries(world["adapter"], force="old model")
    assert fit_gallery_calibration(g, world["adapter"], v, ids).fitted_for == "old model"
