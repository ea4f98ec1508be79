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


def test_each_head_is_guarded_on_held_out_pairs(fitted):
    for modality in ("image", "text"):
        record = fitted[2].training[f"{modality}_head"]
        scores = record["val_geo_mean_rank"]
        assert record["n_val"] == 60 and len(scores) >= 2  # stage 1's own score, then each epoch's
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


def test_an_upgrade_killed_mid_way_resumes_to_the_same_vectors(fitted, tmp_path, capsys):
    import copy
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    import numpy as np

    from xbt.cli import main
    from xbt.forward import job

    old, _, fmap = fitted
    map_dir = fmap.save(tmp_path / "map")
    gen = torch.Generator().manual_seed(3)
    np.save(
        tmp_path / "old.npy", torch.nn.functional.normalize(torch.randn(1000, old.embed_dim, generator=gen), dim=1)
    )
    ref = job.UpgradeJob(tmp_path / "ref", tmp_path / "old.npy", fmap, "image", batch_size=64).run(verbose=False)
    assert ref["complete"] and ref["vectors_per_second"] > 0
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, signal
        from xbt.forward import job
        from xbt.forward.map import ForwardMap
        real, calls = job.write_json, [0]
        def write_then_die(path, obj):  # killed after batch 4 is flushed, before the manifest records it
            calls[0] += 1
            if calls[0] == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, obj)
        job.write_json = write_then_die
        job.UpgradeJob({str(tmp_path / "killed")!r}, {str(tmp_path / "old.npy")!r}, ForwardMap.load({str(map_dir)!r}),
                       "image", batch_size=64).run(verbose=False)
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert json.loads((tmp_path / "killed" / "upgrade.json").read_text())["done"] == [0, 64, 128]
    # the command line resumes it: the rest, and batch 4 again
    args = ["gallery", "upgrade", "--vectors", str(tmp_path / "old.npy"), "--modality", "image"]
    assert (
        main([*args, "--map", str(map_dir), "--out", str(tmp_path / "killed"), "--batch-size", "64", "--quiet"]) == 0
    )
    assert "vectors/s" in capsys.readouterr().out
    a, b = job.UpgradedVectors(tmp_path / "ref"), job.UpgradedVectors(tmp_path / "killed")
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert (b.states == job.STATES["upgraded"]).all() and b.map_id == fmap.map_id
    np.testing.assert_array_equal(
        b.vectors, fmap.upgrade(torch.from_numpy(np.load(tmp_path / "old.npy")), "image").numpy()
    )
    # its space is its map's: another map is refused, for searching and for resuming
    other = ForwardMap({m: copy.deepcopy(h) for m, h in fmap.maps.items()}, fmap.old_ref, fmap.new_ref)
    with torch.no_grad():
        other.maps["image"].linear.weight.mul_(-1)
    with pytest.raises(xbt.XBTError, match="upgraded by forward map"):
        b.search(torch.randn(2, fmap.new_ref.embed_dim), other)
    _, ids = b.search(torch.from_numpy(b.vectors[:3].copy()), fmap, k=1)
    assert ids[:, 0].tolist() == [0, 1, 2]
    # a gallery in migration on the map: re-embedded items join in place, in the same space, the file untouched
    fresh = torch.nn.functional.normalize(torch.randn(2, fmap.new_ref.embed_dim, generator=gen), dim=1)
    b.set_new([5, 7], fresh)
    assert b.counts() == {"old": 0, "upgraded": 998, "new": 2}
    _, ids = b.search(fresh, fmap, k=1)
    assert ids[:, 0].tolist() == [5, 7]
    assert job.UpgradedVectors(tmp_path / "killed").counts()["new"] == 0
    with pytest.raises(xbt.XBTError, match="another map_id"):
        job.UpgradeJob(tmp_path / "killed", tmp_path / "old.npy", other, "image", batch_size=64).run(verbose=False)
    with pytest.raises(xbt.XBTError, match="not a .npy file"):
        job.UpgradeJob(tmp_path / "x", tmp_path / "job.py", fmap, "image")
