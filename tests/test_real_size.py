"""python -m scripts.benchmarks.real_size --light: every step of xbt (stage 1, LoRA stage 2, merge, save/load,
ONNX export served by a fresh process, evaluation on a Karpathy fixture) on each family of tower the real-size
run uses (open_clip ViT, ModifiedResNet, transformers ViT), old and new, at their smallest."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4


def test_every_step_runs_on_each_family_and_the_outputs_agree(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "XBT_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "scripts.benchmarks.real_size", "--light", "--texts", "300", "--pairs", "24"]
    cmd += ["--batches", "1", "4", "--repeats", "1", "--eval-images", "10", "--out", str(tmp_path / "r.json")]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    runs = {r["upgrade"]: r for r in result["results"]}
    assert set(runs) == {"vit", "rn50", "hf", "to-hf", "to-rn50"}
    for key, r in runs.items():
        steps = [s["step"] for s in r["steps"]]
        assert len(steps) == 13 and all(s["peak_rss_mb"] > 0 and s["seconds"] >= 0 for s in r["steps"]), key
        assert {"stage 1", "merge", "load_adapter", "export onnx (with its check)"} <= set(steps), key
        # the LoRA path was trained, served, merged without changing what it returns, saved and loaded back
        assert r["lora_kept"].startswith("stage 2") and r["lora_modalities"] == ["image"], key
        assert r["lora_layers"] > 0, key
        assert r["merge_max_abs_diff"] <= TOL and r["load_adapter_max_abs_diff_text"] <= 1e-6, key
        assert max(r["onnx_check"]["max_abs_diff"].values()) <= TOL, key
        fresh = r["fresh_process"]
        assert fresh["modules_loaded"] == [], key
        assert fresh["max_abs_diff_text"] <= TOL and fresh["max_abs_diff_image"] <= TOL, key
        assert r["evaluate"]["n_images"] == 10 and r["evaluate"]["n_captions"] == 50, key
        for table in ("query_cost_unmerged", "query_cost_merged", "onnx_vs_torch"):
            assert set(r[table]) == {"text batch 1", "image batch 1", "text batch 4", "image batch 4"}, key
    # the families really differ: a transformers tower, a ModifiedResNet and a ViT as the NEW model
    assert "hf-random" in runs["to-hf"]["new"] and runs["to-rn50"]["new"] == "tiny-rn"
    assert "| tiny-vit -> tiny-vit-wide | stage 1 |" in out.stdout
