"""python -m scripts.benchmarks.reproduce_paper --smoke: the whole reproduction script runs offline on tiny
stand-ins."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_prints_its_table_beside_the_published_anchors(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "XBT_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-m", "scripts.benchmarks.reproduce_paper", "--smoke", "--out", str(tmp_path / "paper.json")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "paper.json").read_text())
    assert result["smoke"] is True
    published = result["published"]
    table = out.stdout[out.stdout.index("## R@1, SMOKE RUN") :]
    for data in ("flickr30k", "coco"):
        report = result["measured"][data]
        assert report["split"] == "full" and set(report["methods"]) == {"xbt", "procrustes", "slerp"}
        # the fixture's full protocol: Flickr30k every split (28 images), COCO val+restval (24)
        assert report["n_images"] == {"flickr30k": 28, "coco": 24}[data]
        for key, row in result["r1"][data].items():
            assert row["published"] == published[data][key]
            assert all(0.0 <= v <= 100.0 for v in row["measured"])
            line = next(
                line
                for line in table.splitlines()
                if line.startswith(f"| {data} |") and f"{row['published'][0]:.2f}" in line
            )
            assert f"{row['measured'][0]:.2f} / {row['measured'][1]:.2f}" in line
        assert report["methods"]["xbt"]["info"]["method"] == "xbt"
    assert "40.62 / 21.73" in table and "34.33 / 18.68" in table
