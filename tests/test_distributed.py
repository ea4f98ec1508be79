"""Several processes, one result: 2 CPU processes (gloo) launched by torch.distributed.run against one plain process.

The launch is slow (process start, imports), so one module-scoped run of ``tests/distributed_worker.py``
serves every test: sharded embedding, one DDP stage-2 step and a whole ``xbt.fit``.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "distributed_worker.py"


def _run(out: Path, processes: int) -> None:
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("XBT_CACHE_DIR", None)
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        if processes > 1
        else [sys.executable]
    )
    done = subprocess.run(
        [*launcher, str(WORKER), str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("distributed")
    _run(base / "two", 2)
    _run(base / "one", 1)
    return base / "two", base / "one"


def test_sharded_embedding_in_two_processes_is_the_single_process_cache_bit_for_bit(runs):
    two, one = runs
    files = sorted(p.relative_to(one / "shards") for p in (one / "shards").rglob("*.safetensors"))
    import xbt

    assert len(files) == 2 * math.ceil(
        len(set(xbt.toy.text_corpus(300))) / 32
    )  # 2 models x shards of 32 distinct texts
    assert files == sorted(p.relative_to(two / "shards") for p in (two / "shards").rglob("*.safetensors"))
    for f in files:
        a, b = load_file(str(one / "shards" / f)), load_file(str(two / "shards" / f))
        assert torch.equal(a["embeddings"], b["embeddings"]), f


def test_one_ddp_stage2_step_leaves_identical_weights_on_both_ranks(runs):
    two, one = runs
    r0, r1 = load_file(str(two / "rank0.safetensors")), load_file(str(two / "rank1.safetensors"))
    start = load_file(str(two / "stage1.safetensors"))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    # the step moved the weights (each rank saw a different half of the batch: only averaged gradients agree) ...
    assert any(not torch.equal(r0[k], v) for k, v in start.items())
    assert any(r0[k].abs().max() > 0 for k in r0 if "lora_B" in k)
    # ... to where one process taking the whole batch goes
    single = load_file(str(one / "rank0.safetensors"))
    for k in r0:
        assert torch.allclose(r0[k], single[k], atol=1e-5), k


def test_fit_in_two_processes_gives_one_adapter(runs):
    two, _ = runs
    assert (two / "fit-rank0.txt").read_text() == (two / "fit-rank1.txt").read_text()
