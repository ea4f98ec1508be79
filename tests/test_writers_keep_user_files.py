"""Rewriting an adapter folder or an export keeps the user's files; writes get the umask's modes;
the exported runtime refuses paths outside its folder and changed files; stale temporaries go.

Each test failed on the code before its fix (the user-trial report's five defects).
"""

import json
import os
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import xbt
from xbt import XBTError
from xbt.core import files
from xbt.serving import runtime as xbt_runtime


@pytest.fixture(scope="module")
def other_adapter(old_new, captions_400):
    """A second stage-1 adapter of the tiny pair (another seed: another adapter id)."""
    return xbt.fit(*old_new, captions_400[:100], epochs=1, seed=7, verbose=False)


@pytest.fixture(scope="module")
def export_dir(stage1_adapter, tmp_path_factory):
    return stage1_adapter.export("onnx", tmp_path_factory.mktemp("export") / "s1")


def _user_files(folder):
    (folder / "eval_notes.md").write_text("x")
    (folder / "runs").mkdir()
    (folder / "runs" / "r1.json").write_text("{}")


def _assert_user_files(folder):
    assert (folder / "eval_notes.md").read_text() == "x"
    assert (folder / "runs" / "r1.json").read_text() == "{}"


def test_resaving_an_adapter_folder_keeps_the_users_files(stage1_adapter, other_adapter, old_new, tmp_path):
    _, new = old_new
    shutil.copytree(stage1_adapter.save_pretrained(tmp_path / "ad"), tmp_path / "d")
    _user_files(tmp_path / "d")
    xbt.load_adapter(tmp_path / "d", new=new).save_pretrained(tmp_path / "d")
    _assert_user_files(tmp_path / "d")
    assert xbt.load_adapter(tmp_path / "d", new=new).adapter_id() == stage1_adapter.adapter_id()
    # a different adapter is still refused, and replacing it on request keeps the user's files too
    with pytest.raises(XBTError, match="different adapter.*overwrite=True"):
        other_adapter.save_pretrained(tmp_path / "d")
    other_adapter.save_pretrained(tmp_path / "d", overwrite=True)
    _assert_user_files(tmp_path / "d")
    assert xbt.load_adapter(tmp_path / "d", new=new).adapter_id() == other_adapter.adapter_id()
    # the adapter's own stale names are dropped, and no temporary is left beside or inside the folder
    assert not any(n.startswith(".") for n in os.listdir(tmp_path)) and not any(
        n.startswith(".") for n in os.listdir(tmp_path / "d")
    )


def test_reexporting_keeps_the_users_files_and_refuses_another_adapters_export(
    stage1_adapter, other_adapter, export_dir, tmp_path
):
    s1 = tmp_path / "s1"
    shutil.copytree(export_dir, s1)
    (s1 / "my_server.py").write_text("#")
    stage1_adapter.export("onnx", s1)  # the same adapter again: allowed
    assert (s1 / "my_server.py").read_text() == "#"
    with pytest.raises(XBTError, match="export of another adapter.*overwrite=True"):
        other_adapter.export("onnx", s1)
    manifest = json.loads((s1 / xbt_runtime.MANIFEST).read_text())
    assert manifest["adapter_id"] == stage1_adapter.adapter_id() and (s1 / "my_server.py").read_text() == "#"
    other_adapter.export("onnx", s1, overwrite=True)
    manifest = json.loads((s1 / xbt_runtime.MANIFEST).read_text())
    assert manifest["adapter_id"] == other_adapter.adapter_id() and (s1 / "my_server.py").read_text() == "#"


def test_written_files_and_folders_get_the_umasks_mode(stage1_adapter, tmp_path):
    previous = os.umask(0o022)
    try:
        saved = stage1_adapter.save_pretrained(tmp_path / "a")
        exported = stage1_adapter.export("onnx", tmp_path / "e")
        single = files.write_json(tmp_path / "one.json", {"a": 1})
    finally:
        os.umask(previous)
    assert single.stat().st_mode & 0o777 == 0o644
    for root in (saved, exported):
        assert root.stat().st_mode & 0o777 == 0o755
        for path in root.rglob("*"):
            assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


def test_the_runtime_refuses_outside_paths_and_changed_files_and_serves_empty_batches(export_dir, tmp_path):
    def copy(name, edit=None):
        folder = shutil.copytree(export_dir, tmp_path / name)
        if edit is not None:
            manifest = json.loads((folder / xbt_runtime.MANIFEST).read_text())
            edit(manifest)
            (folder / xbt_runtime.MANIFEST).write_text(json.dumps(manifest))
        return folder

    shutil.copyfile(export_dir / "text.onnx", tmp_path / "text.onnx")
    outside = copy("outside", lambda m: m["text"].update(model="../text.onnx"))
    with pytest.raises(ValueError, match="outside"):
        xbt_runtime.load(outside)
    edited = copy("edited", lambda m: m["image"]["preprocess"].update(mean=[0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="xbt_export.json was changed after export"):
        xbt_runtime.load(edited)
    changed = copy("changed")
    with open(changed / "tokenizer.json", "a") as f:
        f.write(" ")
    with pytest.raises(ValueError, match="tokenizer.json.*changed after export"):
        xbt_runtime.load(changed)
    old = copy("old", lambda m: m.pop("digests"))  # exported before digests: loads, with one warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        served = xbt_runtime.load(old, threads=1)
    assert [str(w.message) for w in caught if "digests" in str(w.message)] == [
        f"{old / xbt_runtime.MANIFEST} has no sha256 digests (exported before xbt wrote them), so its files and "
        "preprocessing were not checked; re-export the adapter to have them checked"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fresh export checks its digests silently
        served = xbt_runtime.load(export_dir, threads=1)
    for out in (served.encode_text([]), served.encode_image([])):
        assert out.dtype == np.float32 and out.shape == (0, 32)
    assert served.encode_text(["a red circle"]).shape == (1, 32)


def test_a_dead_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target, old = tmp_path / "adapter", time.time() - 2 * files.STALE_AFTER_S

    def temp(kind, pid, age=old, host=files.HOST):
        path = tmp_path / f".adapter.{kind}-{host}-{pid}-{len(os.listdir(tmp_path)):08x}"
        path.mkdir()
        (path / "heads.safetensors").write_text("half")
        for p in (path / "heads.safetensors", path):
            os.utime(p, (age, age))
        return path

    stale = temp("tmp", dead.pid)
    backup = temp("old", dead.pid)  # a crash between the swap's two renames: the previous folder
    legacy = tmp_path / ".adapter.abcd_123.tmp"  # what mkstemp named before: no pid, a day old
    legacy.write_text("half")
    os.utime(legacy, (time.time() - 2 * files.LEGACY_STALE_AFTER_S,) * 2)
    kept = [
        temp("tmp", os.getpid()),  # a live writer
        temp("tmp", dead.pid, age=time.time()),  # just written: within the quiet time
        temp("tmp", dead.pid, host="ffffffff"),  # another host's pid means nothing here
    ]
    with files.atomic_path(target, folder=True) as tmp:
        (tmp / "xbt_config.json").write_text("{}")
    assert not stale.exists() and not legacy.exists() and not backup.exists()
    # the previous folder was put back first, and the new write kept its file
    assert (target / "heads.safetensors").read_text() == "half" and (target / "xbt_config.json").is_file()
    assert all(p.exists() for p in kept)
    assert sorted(os.listdir(tmp_path)) == sorted(["adapter", *(p.name for p in kept)])
