"""Generate the legacy adapter fixtures: adapter folders saved by xbt as of commit 24e3646.

Commit 5e60fc4 changed the model weights fingerprint (``CLIPEncoder.refresh_fingerprint`` sums
each tensor in float64 instead of float32), so adapter folders saved before it record a
fingerprint today's code no longer computes. This script makes three small such folders on the
toy shapes world, with the OLD code, and the outputs that OLD code gives after loading them back:

    <out>/stage1/              xbt.fit(old, new, texts)                      (stage 1 only)
    <out>/stage2/              xbt.fit(old, new, texts, pairs, stage2=...)    (stage 1 + 2, LoRA)
    <out>/slerp/               xbt.fit(old, new, texts, pairs, method="slerp") (fusion; load with old=)
    <out>/expected.safetensors  "<kind>.text" [8, 64], "<kind>.image" [4, 64] for each kind
    <out>/probes.json           which toy captions and images those rows are, the fit settings,
                                and the fingerprints / torch thread count the old code saw

It MUST be run with the code of commit 24e3646 importable as ``xbt`` (it does not touch
``sys.path``; check with ``python -c "import xbt; print(xbt.__file__)"``), e.g. from a checkout
of this repository:

    git worktree add /tmp/xbt_legacy 24e3646
    cd /tmp/xbt_legacy
    PYTHONPATH=/tmp/xbt_legacy XBT_CACHE_DIR=/tmp/legacy_cache \\
        /path/to/venv/bin/python /path/to/repo/scripts/assets/legacy_adapter_fixtures.py \\
        --out /path/to/repo/tests/fixtures/legacy_adapters
    cd - && git worktree remove /tmp/xbt_legacy

Everything runs on CPU in about a minute. The fits are seeded, but the saved fingerprints were
computed in float32 and so may depend on the torch thread count (recorded in probes.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import torch
from safetensors.torch import save_file

import xbt

LEGACY_COMMIT = "24e3646"
N_TEXTS = 3000
N_PAIRS = 200
N_PROBE_TEXTS = 8
N_PROBE_IMAGES = 4
SEED = 0

STAGE1 = dict(hidden=64, epochs=4, batch_size=256, patience=2)
STAGE2 = dict(
    rank=2,
    alpha=4.0,
    epochs=1,
    batch_size=32,
    caption_bank_size=500,
    text_epochs=1,
    text_batch_size=256,
    distill_texts=1000,
    precision="fp32",
    guard=False,
)  # keep the last epoch: with the guard on, stage 1 wins on these few pairs and no LoRA is saved
SLERP = dict(support="text")


def probe_inputs():
    """The probe captions and images: caption ``i % 5`` of test image ``i`` (i < 8), test images 0-3."""
    images, captions = xbt.toy.test_split(max(N_PROBE_TEXTS, N_PROBE_IMAGES))
    texts = [captions[i][i % 5] for i in range(N_PROBE_TEXTS)]
    return texts, images[:N_PROBE_IMAGES]


def folder_files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", required=True, type=Path, help="folder to write the fixtures to (replaced if present)"
    )
    args = parser.parse_args()
    if not (Path(xbt.__file__).parent / "encoders.py").is_file():
        raise SystemExit(
            f"`import xbt` found {xbt.__file__}, not the code of commit {LEGACY_COMMIT} "
            "(which has xbt/encoders.py): put that checkout first on PYTHONPATH"
        )

    torch.manual_seed(SEED)
    old, new = xbt.toy.load_clips(device="cpu")
    texts = xbt.toy.text_corpus(N_TEXTS)
    pairs = xbt.toy.pairs(N_PAIRS)
    common = dict(seed=SEED, device="cpu", verbose=False)
    adapters = {
        "stage1": xbt.fit(old, new, texts, **common, **STAGE1),
        "stage2": xbt.fit(old, new, texts, pairs=pairs, stage2=STAGE2, **common, **STAGE1),
        "slerp": xbt.fit(old, new, texts, pairs=pairs, method="slerp", **common, **SLERP),
    }

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    probe_texts, probe_images = probe_inputs()
    expected, folders = {}, {}
    for kind, adapter in adapters.items():
        folder = out / kind
        if folder.exists():
            shutil.rmtree(folder)
        adapter.save_pretrained(folder)
        loaded = xbt.load_adapter(folder, new=new, old=old if kind == "slerp" else None)
        with torch.no_grad():
            expected[f"{kind}.text"] = loaded.encode_text(probe_texts).float().cpu().contiguous()
            expected[f"{kind}.image"] = loaded.encode_image(probe_images).float().cpu().contiguous()
        folders[kind] = {"class": type(loaded).__name__, "method": loaded.method, "files": folder_files(folder)}
        print(kind, type(loaded).__name__, folders[kind]["files"])
    save_file(expected, str(out / "expected.safetensors"), metadata={"xbt_commit": LEGACY_COMMIT})

    try:
        commit = subprocess.run(
            ["git", "-C", str(Path(xbt.__file__).parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    probes = {
        "world": "shapes",
        "texts": {
            "rule": f"images, captions = xbt.toy.test_split({max(N_PROBE_TEXTS, N_PROBE_IMAGES)}); "
            f"texts = [captions[i][i % 5] for i in range({N_PROBE_TEXTS})]",
            "values": probe_texts,
        },
        "images": {
            "rule": f"xbt.toy.test_split({N_PROBE_IMAGES})[0]  (test images 0..{N_PROBE_IMAGES - 1}, seed 0)",
            "sha256_rgb": [hashlib.sha256(im.convert("RGB").tobytes()).hexdigest() for im in probe_images],
            "size": list(probe_images[0].size),
        },
        "expected": {
            "file": "expected.safetensors",
            "names": sorted(expected),
            "how": "xbt.load_adapter(<kind>, new=new[, old=old for slerp]).encode_text(texts) / "
            ".encode_image(images), CPU float32",
        },
        "made_with": {
            "xbt_commit": commit or LEGACY_COMMIT,
            "xbt_version": xbt.__version__,
            "torch": torch.__version__,
            "torch_num_threads": torch.get_num_threads(),
            "fingerprints": {"xbt-toy-old": old.fingerprint, "xbt-toy-new": new.fingerprint},
        },
        "fit": {
            "n_texts": N_TEXTS,
            "texts": f"xbt.toy.text_corpus({N_TEXTS})",
            "n_pairs": N_PAIRS,
            "pairs": f"xbt.toy.pairs({N_PAIRS})",
            "seed": SEED,
            "device": "cpu",
            "stage1": STAGE1,
            "stage2": {**STAGE1, "stage2": STAGE2},
            "slerp": SLERP,
        },
        "adapters": folders,
    }
    (out / "probes.json").write_text(json.dumps(probes, indent=2) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
