"""The Ray engine on Ray's local mode: a toy gallery re-embedded into LanceDB, killed and resumed, rolled back."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import xbt
from xbt.adapters.config import ModelRef
from xbt.cluster import RayBackfill, open_lance_gallery, rollback_table
from xbt.gallery import MixedGallery
from xbt.models.embedding import embed_texts
from xbt.vectordb import LanceStore

ray = pytest.importorskip("ray", reason="the cluster extra (pip install 'xbt[cluster]') is part of [dev]")
TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from ray_items import WatchedItems, reads  # noqa: E402

N_IMAGES, BATCH = 24, 20  # 120 captions: 6 planned batches


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    old, new = xbt.toy.load_clips(device="cpu")
    _, caps = xbt.toy.test_split(N_IMAGES)
    texts = [c for cs in caps for c in cs]
    folder = tmp_path_factory.mktemp("cluster") / "gallery"
    g = MixedGallery(ModelRef.of(old), new.embed_dim, "text")
    g.add_old(embed_texts(old, texts, verbose=False), items=texts)
    g.save(folder)
    order = np.random.default_rng(0).permutation(len(texts))
    reference = folder.parent / "uninterrupted"
    stats = RayBackfill(folder, new, texts, reference, order=order, batch_size=BATCH).run(verbose=False)
    yield {"old": old, "new": new, "texts": texts, "folder": folder, "order": order, "reference": reference, **stats}
    ray.shutdown()


def opened(path) -> LanceStore:
    """The table a test's backfill wrote (the toy OLD and NEW widths, 64 and 96)."""
    return LanceStore.open(path, 64, 96)


def table(path) -> dict:
    """The table's rows by id: new vectors, spaces and stamps (what two runs must agree on)."""
    import lancedb

    t = lancedb.connect(str(path)).open_table("xbt_gallery").to_arrow().sort_by("id")
    return {c: t.column(c).to_pylist() for c in t.column_names}


def test_an_uninterrupted_run_commits_each_planned_batch_as_one_version(setup):
    assert setup["embedded"] == len(setup["texts"]) and setup["batches"] == 6
    store = LanceStore.open(setup["reference"], setup["old"].embed_dim, setup["new"].embed_dim)
    assert store.in_new.all() and store.version == store.pre_backfill_version + 6
    assert store.stamps == {"old_model": setup["old"].fingerprint, "new_model": setup["new"].fingerprint}
    rows = table(setup["reference"])
    assert set(rows["new_model"]) == {setup["new"].fingerprint} and set(rows["old_model"]) == {
        setup["old"].fingerprint
    }
    want = embed_texts(setup["new"], setup["texts"], verbose=False).numpy()
    np.testing.assert_allclose(np.asarray(rows["new"], np.float32), want, atol=1e-6)
    again = RayBackfill(setup["folder"], setup["new"], setup["texts"], setup["reference"]).run(verbose=False)
    assert again["embedded"] == 0 and again["version"] == store.version  # nothing left: nothing embedded


def test_a_worker_killed_mid_batch_is_restarted_and_nothing_is_committed_twice(setup, tmp_path):
    log = str(tmp_path / "reads")
    victim = int(setup["order"][2 * BATCH + 3])  # in the third planned batch
    items = WatchedItems(setup["texts"], log, die_at=victim)
    stats = RayBackfill(
        setup["folder"], setup["new"], items, tmp_path / "db", order=setup["order"], batch_size=BATCH
    ).run(verbose=False)
    assert Path(log + ".died").exists()  # the worker did die
    assert stats["batches"] == 6 and stats["version"] == opened(tmp_path / "db").pre_backfill_version + 6
    assert table(tmp_path / "db") == table(setup["reference"])
    twice = {i for i, c in Counter(reads(log)).items() if c > 1}
    assert twice <= set(setup["order"][2 * BATCH : 3 * BATCH].tolist())  # only the batch in flight ran again


def test_a_killed_driver_resumes_to_the_same_table_without_embedding_a_committed_item(setup, tmp_path):
    log, db = str(tmp_path / "reads"), tmp_path / "db"
    np.save(tmp_path / "order.npy", setup["order"])
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, xbt
        sys.path.insert(0, {str(TESTS)!r})
        from ray_items import WatchedItems
        from xbt.cluster import RayBackfill
        _, new = xbt.toy.load_clips(device="cpu")
        _, caps = xbt.toy.test_split({N_IMAGES})
        items = WatchedItems([c for cs in caps for c in cs], {log!r}, delay=0.05)
        order = np.load({str(tmp_path / "order.npy")!r})
        job = RayBackfill({str(setup["folder"])!r}, new, items, {str(db)!r}, order=order, batch_size={BATCH})
        job.run(verbose=False)
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    try:
        deadline = time.time() + 180
        committed = 0
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            try:
                store = opened(db)
            except xbt.XBTError:
                continue
            committed = int(store.in_new.sum())
            if committed >= 2 * BATCH:
                break
        assert proc.poll() is None, "the driver finished before it could be killed; give its items a longer delay"
        assert committed >= 2 * BATCH
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
    before = opened(db)
    done = set(np.flatnonzero(before.in_new).tolist())
    assert 0 < len(done) < len(setup["texts"]) and len(done) % BATCH == 0  # whole batches only
    resumed_log = str(tmp_path / "resumed")
    items = WatchedItems(setup["texts"], resumed_log)
    stats = RayBackfill(setup["folder"], setup["new"], items, db).run(verbose=False)  # the plan is the table's
    assert stats["embedded"] == len(setup["texts"]) - len(done)
    assert not done & set(reads(resumed_log))  # no committed item embedded again
    assert table(db) == table(setup["reference"])


def test_rollback_restores_the_pre_backfill_version_exactly(setup, tmp_path):
    import lancedb

    db = tmp_path / "db"
    job = RayBackfill(setup["folder"], setup["new"], setup["texts"], db, order=setup["order"], batch_size=BATCH)
    job.run(0.5, verbose=False)
    store = opened(db)
    pre = lancedb.connect(str(db)).open_table("xbt_gallery")
    pre.checkout(store.pre_backfill_version)
    expected = pre.to_arrow().sort_by("id")
    assert int(store.in_new.sum()) == 60
    assert rollback_table(db) == store.pre_backfill_version
    after = lancedb.connect(str(db)).open_table("xbt_gallery").to_arrow().sort_by("id")
    assert after.equals(expected) and set(after.column("space").to_pylist()) == {"old"}
    gallery = open_lance_gallery(setup["folder"], db)
    np.testing.assert_array_equal(
        gallery.store.vectors("old", np.arange(gallery.size)),
        MixedGallery.load(setup["folder"]).store.vectors("old", np.arange(gallery.size)),
    )


def test_a_table_of_another_new_model_or_order_is_refused(setup, tmp_path):
    job = RayBackfill(
        setup["folder"], setup["new"], setup["texts"], tmp_path / "db", order=setup["order"], batch_size=BATCH
    )
    job.run(BATCH, verbose=False)
    with pytest.raises(xbt.XBTError, match="another order"):
        RayBackfill(setup["folder"], setup["new"], setup["texts"], tmp_path / "db", order=np.arange(120)).run(
            verbose=False
        )
    other = copy.deepcopy(setup["new"])
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(0.01)
    other.refresh_fingerprint()
    with pytest.raises(xbt.XBTError, match="new model"):
        RayBackfill(setup["folder"], other, setup["texts"], tmp_path / "db").run(verbose=False)


def test_the_cli_backfills_on_ray_into_lancedb_searches_it_and_rolls_it_back(setup, tmp_path, capsys):
    from xbt.cli import main

    adapter = xbt.fit(setup["old"], setup["new"], xbt.toy.text_corpus(3000), epochs=3, verbose=False)
    adapter_dir = adapter.save_pretrained(tmp_path / "adapter")
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(setup["texts"][:40]) + "\n")
    gallery = tmp_path / "g"
    base = ["--gallery", str(gallery), "--adapter", str(adapter_dir), "--quiet"]
    assert main(["gallery", "build", *base, "--old", "xbt-toy-old", "--texts", str(captions)]) == 0
    assert main(["gallery", "backfill", *base, "--address", "auto"]) == 2  # a ray option without the ray engine
    assert "apply to --engine ray only" in capsys.readouterr().err
    ray_args = ["--engine", "ray", "--store", "lancedb", "--batch-size", "8"]
    assert main(["gallery", "backfill", *base, *ray_args, "--budget", "0.5"]) == 0
    assert "20 of 40 items in the new space" in capsys.readouterr().out
    store = opened(gallery / "lancedb")
    assert int(store.in_new.sum()) == 20 and store.version == store.pre_backfill_version + 3  # 8 + 8 + 4
    assert main(["gallery", "cutover", "--gallery", str(gallery)]) == 2  # half backfilled: refused
    assert "20 of 40 items are not backfilled yet" in capsys.readouterr().err
    assert main(["gallery", "rollback", "--gallery", str(gallery)]) == 0
    assert "restored to version" in capsys.readouterr().out
    assert not opened(gallery / "lancedb").in_new.any()
    assert main(["gallery", "backfill", *base, *ray_args, "--budget", "0.5"]) == 0  # the same plan, again
    assert opened(gallery / "lancedb").in_new.sum() == 20 and "20 of 40" in capsys.readouterr().out
    assert (
        main(["gallery", "search", *base, "--store", "lancedb", "--query-image", str(_image(tmp_path)), "-k", "3"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.count("item ") == 3
    queries = tmp_path / "queries"
    queries.mkdir()
    for i, image in enumerate(xbt.toy.pairs(30)["image"]):
        image.save(queries / f"{i}.png")
    guard = tmp_path / "guard"
    xbt.toy.pairs(20, seed=1).save_to_disk(str(guard))
    refresh = ["gallery", "refresh", "--gallery", str(gallery), "--adapter", str(adapter_dir), "--quiet"]
    refresh += ["--pairs", str(guard)]
    assert main([*refresh, "--queries", str(captions), "--out", str(tmp_path / "r")]) == 2
    assert "give a folder of images" in capsys.readouterr().err  # a caption gallery is searched by images
    assert main([*refresh, "--queries", str(queries), "--out", str(tmp_path / "r")]) == 2
    assert "backfill further first" in capsys.readouterr().err  # 20 items: 4 held out
    assert main(["gallery", "backfill", *base, *ray_args]) == 0
    out = capsys.readouterr().out  # the batch cut at 20 by the budget is finished, its first 4 not embedded again
    assert "40 of 40 items" in out and "this run: 20 embedded in 3 batches" in out
    assert main([*refresh, "--queries", str(queries), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "40 re-embedded items, 30 query examples" in out
    assert ("saved to" in out) == (tmp_path / "r" / "xbt_config.json").exists()
    assert ("calibration was fitted for the adapter this one replaces" in out) == ("saved to" in out)
    assert main(["gallery", "cutover", "--gallery", str(gallery)]) == 0
    assert "now searches its new vectors only" in capsys.readouterr().out
    assert not opened(gallery / "lancedb").has_old
    assert main(["gallery", "rollback", "--gallery", str(gallery)]) == 2
    assert "cut over" in capsys.readouterr().err


def _image(folder: Path) -> Path:
    images, _ = xbt.toy.test_split(1)
    images[0].save(folder / "q.png")
    return folder / "q.png"


def test_the_lancedb_store_refuses_items_mid_backfill_and_cuts_over_by_dropping_the_old_column(tmp_path):
    rng = np.random.default_rng(0)
    old, new = rng.standard_normal((30, 8)).astype(np.float32), rng.standard_normal((30, 12)).astype(np.float32)
    store = LanceStore(8, 12, path=tmp_path / "db", old_model="o", new_model="n")
    store.add_old(old[:20])
    store.add_old(old[20:])  # before the backfill: welcome
    assert store.pre_backfill_version is None
    store.set_new(np.arange(10), new[:10])
    tagged = store.pre_backfill_version
    assert tagged is not None and store.version == tagged + 1
    with pytest.raises(xbt.XBTError, match="while its backfill runs"):
        store.add_old(old[:1])
    again = LanceStore.open(tmp_path / "db", 8, 12)  # what another process sees
    assert again.in_new.sum() == 10 and again.stamps == {"old_model": "o", "new_model": "n"}
    np.testing.assert_array_equal(again.vectors("new", np.arange(10)), new[:10])
    with pytest.raises(xbt.XBTError, match="no 'new' vector"):
        again.vectors("new", [12])
    with pytest.raises(xbt.XBTError, match="holds 8-d old and 12-d new"):
        LanceStore.open(tmp_path / "db", 8, 16)
    with pytest.raises(xbt.XBTError, match="holds a backfill"):
        LanceStore(8, 12, path=tmp_path / "db")  # a new store over it would drop the backfill
    store.set_new(np.arange(10, 30), new[10:])
    store.cutover()
    assert not store.has_old and "old" not in store.table.schema.names
    with pytest.raises(xbt.XBTError, match="cut over"):
        store.rollback()
    np.testing.assert_array_equal(store.search("new", new[:3], 1)[1][:, 0], [0, 1, 2])


def _toy_new():
    """The toy NEW model, built on the worker that calls it (``RayBackfill(model_factory=...)``)."""
    return xbt.toy.load_clips(device="cpu")[1]


def test_workers_can_load_the_model_themselves_and_write_the_same_table(setup, tmp_path):
    job = RayBackfill(
        setup["folder"],
        setup["new"],
        setup["texts"],
        tmp_path / "db",
        order=setup["order"],
        batch_size=BATCH,
        model_factory=_toy_new,
    )
    assert job.run(verbose=False)["batches"] == 6
    assert table(tmp_path / "db") == table(setup["reference"])


def _other_new():
    """A NEW model other than the one the backfill stamps (its weights moved)."""
    import torch as t

    model = xbt.toy.load_clips(device="cpu")[1]
    with t.no_grad():
        for p in model.model.parameters():
            p.add_(0.01)
    model.refresh_fingerprint()
    return model


def test_a_worker_building_another_model_than_the_stamped_one_stops_the_backfill(setup, tmp_path):
    job = RayBackfill(setup["folder"], setup["new"], setup["texts"], tmp_path / "db", model_factory=_other_new)
    with pytest.raises(Exception, match="not the one the backfill stamps"):
        job.run(verbose=False)
    assert not opened(tmp_path / "db").in_new.any()  # nothing was committed


def test_the_backfill_stops_at_each_refresh_point_with_every_item_new_so_far(setup, tmp_path):
    seen = []

    def on_refresh(store, ids):
        seen.append(len(ids))
        np.testing.assert_array_equal(ids, np.flatnonzero(store.in_new))
        return len(ids)

    job = RayBackfill(
        setup["folder"], setup["new"], setup["texts"], tmp_path / "db", order=setup["order"], batch_size=BATCH
    )
    with pytest.raises(xbt.XBTError, match="together"):
        job.run(verbose=False, refresh_every=0.25)
    stats = job.run(verbose=False, refresh_every=0.25, on_refresh=on_refresh)
    # batches of 20 of 120 items: the shares 1/6, 2/6, ... pass 25 % at 40, 50 % at 60, 75 % at 100, 100 % at 120
    assert seen == [40, 60, 100, 120] and [r["result"] for r in stats["refreshes"]] == seen
