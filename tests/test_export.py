"""ONNX export of the toy adapters: onnxruntime gives the torch outputs, in a process without torch or xbt."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import xbt
from xbt import XBTError, toy
from xbt.cli import main as cli_main
from xbt.serving import runtime as xbt_runtime
from xbt.toy import pair_list

TOL = 1e-4


@pytest.fixture(scope="module")
def toy_clips():
    return xbt.toy.load_clips(device="cpu")


@pytest.fixture(scope="module")
def adapters(toy_clips, captions_400):
    """The two toy adapters of the acceptance list: stage 1, and stage 1+2 (LoRA on the image tower)."""
    old, new = toy_clips
    stage1 = xbt.fit(old, new, captions_400, epochs=2, verbose=False)
    stage2 = {"image_tower": "lora", "epochs": 2, "batch_size": 8, "text_epochs": 2, "val_fraction": 0.0}
    both = xbt.fit(old, new, captions_400, pairs=pair_list(40), epochs=2, stage2=stage2, verbose=False)
    assert both.lora is not None and "image" in both.lora_modalities
    return {"stage1": stage1, "stage1+2": both}


@pytest.fixture(scope="module")
def probes():
    images, captions = toy.test_split(12)
    return [c for caps in captions for c in caps][:40], images


@pytest.fixture(scope="module")
def exported(adapters, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    return {name: a.export("onnx", root / name) for name, a in adapters.items()}


@pytest.mark.parametrize("name", ["stage1", "stage1+2"])
def test_onnxruntime_equals_torch(name, adapters, exported, probes):
    adapter, folder = adapters[name], exported[name]
    texts, images = probes
    served = xbt_runtime.load(folder, threads=1)
    assert not adapter.merged  # export merges a copy; the adapter itself is unchanged
    reference = {"text": adapter.encode_text(texts).numpy(), "image": adapter.encode_image(images).numpy()}
    got = {"text": served.encode_text(texts), "image": served.encode_image(images)}
    for m in ("text", "image"):
        assert got[m].dtype == np.float32 and got[m].shape == reference[m].shape == (
            len(texts if m == "text" else images),
            64,
        )
        assert np.abs(got[m] - reference[m]).max() <= TOL, m
        assert np.allclose(np.linalg.norm(got[m], axis=1), 1.0, atol=1e-5)
    if adapter.lora is not None:  # the merged torch path, what a torch server would run, agrees too
        merged = xbt.load_adapter(adapter.save_pretrained(folder.parent / "saved"), new=adapter.new).merge()
        assert np.abs(served.encode_image(images) - merged.encode_image(images).numpy()).max() <= TOL
        # and LoRA really is in the image graph: the bare new model's image path gives other vectors
        bare = adapter.heads["image"](adapter.new.encode_image(images)).numpy()
        assert np.abs(got["image"] - bare).max() > 10 * TOL
    manifest = json.loads((folder / xbt_runtime.MANIFEST).read_text())
    assert manifest["adapter_id"] == adapter.adapter_id() and manifest["embed_dim"] == 64
    assert manifest["check"]["max_abs_diff"]["text"] <= TOL and manifest["image"]["preprocess"]["size"] == 48
    assert manifest["check"]["preprocess_max_levels"] < 1e-3  # open_clip's preprocessing is reproduced exactly
    assert manifest["lora_merged"] == (["image"] if name == "stage1+2" else [])


def test_the_exported_folder_serves_in_a_process_without_torch_or_xbt(adapters, exported, probes, tmp_path):
    adapter, folder = adapters["stage1+2"], exported["stage1+2"]
    texts, images = probes
    for i, im in enumerate(images[:4]):
        im.save(tmp_path / f"{i}.png")
    script = f"""
import json, sys
sys.path.insert(0, {str(folder)!r})
from PIL import Image
import xbt_runtime
enc = xbt_runtime.load({str(folder)!r}, threads=1)
t = enc.encode_text({texts[:5]!r})
i = enc.encode_image([Image.open({str(tmp_path)!r} + f"/{{k}}.png") for k in range(4)])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "xbt", "transformers", "open_clip"))
print(json.dumps({{"text": t.tolist(), "image": i.tolist(), "loaded": loaded}}))
"""
    # -I: isolated mode, so neither the current folder nor PYTHONPATH can put xbt on the path
    out = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert np.abs(np.array(result["text"]) - adapter.encode_text(texts[:5]).numpy()).max() <= TOL
    assert np.abs(np.array(result["image"]) - adapter.encode_image(images[:4]).numpy()).max() <= TOL


def test_xbt_export_command(adapters, probes, tmp_path, capsys):
    saved = adapters["stage1"].save_pretrained(tmp_path / "adapter")
    assert cli_main(["export", "--adapter", str(saved), "--out", str(tmp_path / "onnx")]) == 0
    assert "xbt_runtime.load" in capsys.readouterr().out
    served = xbt_runtime.load(tmp_path / "onnx")
    texts = probes[0][:8]
    assert np.abs(served.encode_text(texts) - adapters["stage1"].encode_text(texts).numpy()).max() <= TOL
    # a folder that is not an export is never overwritten
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert cli_main(["export", "--adapter", str(saved), "--out", str(tmp_path / "other")]) == 2
    assert "not an xbt export" in capsys.readouterr().err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_what_cannot_be_exported_is_refused(adapters, toy_clips, tmp_path):
    old, _ = toy_clips
    with pytest.raises(XBTError, match="unknown export format"):
        adapters["stage1"].export("tflite", tmp_path / "x")
    fused = xbt.FusionAdapter(adapters["stage1"], old, alpha_text=0.5, alpha_image=0.5)
    with pytest.raises(XBTError, match="OLD model on every query"):
        fused.export("onnx", tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_graph_that_does_not_reproduce_torch_is_refused(adapters, tmp_path, monkeypatch):
    # A head whose torch forward differs from what was traced (a stand-in for an op ONNX gets wrong).
    import xbt.serving.export as export

    real = export._check

    def tampered(folder, text_enc, image_enc, heads, tolerance):
        with torch.no_grad():
            heads["text"].linear.weight.mul_(-1)
        try:
            return real(folder, text_enc, image_enc, heads, tolerance)
        finally:
            with torch.no_grad():
                heads["text"].linear.weight.mul_(-1)

    monkeypatch.setattr(export, "_check", tampered)
    with pytest.raises(XBTError, match="exported text encoder differs"):
        adapters["stage1"].export("onnx", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_a_transformers_new_model_exports_too(old_new, captions_400, tmp_path):
    from tests.conftest import tiny_hf_clip
    from xbt.models.encoders import as_encoder

    old, _ = old_new
    new = as_encoder(tiny_hf_clip(48, seed=3), name="tiny-hf-new")
    stage2 = {"image_tower": "lora", "epochs": 1, "batch_size": 8, "text_epochs": 1, "val_fraction": 0.0}
    adapter = xbt.fit(old, new, captions_400, pairs=pair_list(16), epochs=1, stage2=stage2, verbose=False)
    folder = adapter.export("onnx", tmp_path / "hf")
    served = xbt_runtime.load(folder, threads=1)
    assert set(served.tokenize(["a"])) == {"input_ids", "attention_mask"}  # transformers towers take the mask
    texts, images = captions_400[:6], [im for im, _ in pair_list(5)]
    assert np.abs(served.encode_text(texts) - adapter.encode_text(texts).numpy()).max() <= TOL
    assert np.abs(served.encode_image(images) - adapter.encode_image(images).numpy()).max() <= TOL
