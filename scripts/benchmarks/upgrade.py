"""``xbt gallery upgrade`` on a million stored vectors: throughput, bounded memory, and a kill -9 resumed.

    python -m scripts.benchmarks.upgrade                  # 1,000,000 vectors, patterns-wide widths (512 -> 768)
    python -m scripts.benchmarks.upgrade --n 100000       # quicker

A forward map is fitted briefly on the patterns-wide toy world (real CLIP widths, 512-d OLD -> 768-d NEW;
its quality does not matter here, its shape does), and ``--n`` synthetic unit OLD vectors are written to
a ``.npy`` file. Then, each as its own ``xbt gallery upgrade`` process:

1. a full run: wall time, vectors/s, the process's peak RSS (against the size of the input and output
   files: bounded memory means far below them);
2. a second run into another folder, killed with SIGKILL after ``--kill-after`` seconds, then the same
   command again, which resumes: its output must be byte-identical to run 1's (sha256 of ``upgraded.npy``
   and ``states.npy``).

Writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from xbt.core.files import write_json
from xbt.forward import fit_forward
from xbt.toy.worlds import get_world

ROOT = Path(__file__).resolve().parents[2]


def sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


#: the ``xbt`` entry point, run by this interpreter
XBT = [sys.executable, "-c", "import sys; from xbt.cli import main; sys.exit(main())"]


def command(args, out: Path) -> list[str]:
    flags = {"--vectors": args.work / "old.npy", "--modality": "image", "--map": args.work / "map", "--out": out}
    flags["--batch-size"] = args.batch_size
    return [*XBT, "gallery", "upgrade", *(str(x) for kv in flags.items() for x in kv), "--quiet"]


def run(cmd: list[str], env: dict, kill_after: float | None = None) -> tuple[int, float, float, str]:
    """(return code, wall seconds, peak RSS GB of that child, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    if kill_after is not None:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return proc.returncode, wall, max(peak, before) / 1e6, out.strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=65_536)
    p.add_argument("--kill-after", type=float, default=30.0, help="seconds before the second run is killed")
    p.add_argument("--work", type=Path, default=Path("benchmarks/out/upgrade-work"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/out/upgrade")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    world = get_world("patterns-wide")
    old, new = world.load_clips()
    if not (args.work / "map" / "forward.safetensors").is_file():
        fmap = fit_forward(old, new, world.text_corpus(5000), stage1={"epochs": 1}, verbose=False)
        fmap.save(args.work / "map")
    if not (args.work / "old.npy").is_file() or np.load(args.work / "old.npy", mmap_mode="r").shape[0] != args.n:
        vec = np.lib.format.open_memmap(args.work / "old.npy", mode="w+", dtype=np.float32, shape=(args.n, 512))
        gen = np.random.default_rng(0)
        for s in range(0, args.n, 100_000):
            x = gen.standard_normal((min(100_000, args.n - s), 512), dtype=np.float32)
            vec[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        vec.flush()
        del vec
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    for folder in ("full", "killed"):
        for f in ("upgrade.json", "upgraded.npy", "states.npy"):
            (args.work / folder / f).unlink(missing_ok=True)
    _, wall, peak, said = run(command(args, args.work / "full"), env)
    print(f"full run: {wall:.1f} s, peak RSS {peak:.2f} GB; {said}")
    code, killed_wall, _, _ = run(command(args, args.work / "killed"), env, kill_after=args.kill_after)
    manifest = args.work / "killed" / "upgrade.json"
    done = json.loads(manifest.read_text())["done"] if manifest.is_file() else []  # killed before its first batch
    print(f"killed run: return code {code} after {killed_wall:.1f} s, {len(done)} batches recorded")
    _, resume_wall, _, said2 = run(command(args, args.work / "killed"), env)
    print(f"resumed: {resume_wall:.1f} s; {said2}")
    same = {f: sha(args.work / "full" / f) == sha(args.work / "killed" / f) for f in ("upgraded.npy", "states.npy")}
    sizes = {f: (args.work / "full" / f).stat().st_size / 1e9 for f in ("upgraded.npy",)}
    sizes["old.npy"] = (args.work / "old.npy").stat().st_size / 1e9
    result = {
        "n": args.n,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "full_seconds": round(wall, 1),
        "vectors_per_second": round(args.n / wall),
        "peak_rss_gb": round(peak, 2),
        "file_sizes_gb": {k: round(v, 2) for k, v in sizes.items()},
        "killed": {"return_code": code, "after_seconds": round(killed_wall, 1), "batches_recorded": len(done)},
        "resume_seconds": round(resume_wall, 1),
        "identical_after_resume": same,
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "upgrade.json", result)
    return 0 if all(same.values()) and code == -signal.SIGKILL else 1


if __name__ == "__main__":
    raise SystemExit(main())
