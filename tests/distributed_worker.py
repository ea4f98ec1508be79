"""One process of the multi-process tests (run by ``python -m torch.distributed.run``, or alone as rank 0 of 1).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py OUT

In turn: the sharded embedding of a small caption stream into ``OUT/shards``; one stage-2 step
(8 pairs, one batch split across the processes), each rank's trainable weights saved to
``OUT/rank<r>.safetensors``; ``xbt.fit`` with pairs, each rank's adapter id written to
``OUT/fit-rank<r>.txt``. One launch for all three: starting processes is the slow part.
"""

import sys

import torch
from safetensors.torch import save_file

import xbt
from tests.conftest import tiny_open_clip
from xbt.core.distributed import world
from xbt.core.seeding import seeded
from xbt.method.checkpoint import trainable_state
from xbt.method.config import Stage2Config
from xbt.method.stage2 import PairData, train_stage2
from xbt.models.embedding import embed_images
from xbt.models.encoders import as_encoder
from xbt.models.head import Projection
from xbt.models.shards import embed_text_shards

SHARD_ROWS = 32


def models():
    return as_encoder(tiny_open_clip(32, seed=1), name="tiny-old"), as_encoder(
        tiny_open_clip(48, seed=2), name="tiny-new"
    )


def main(out: str) -> None:
    torch.set_num_threads(1)
    old, new = models()
    rank, _ = world()
    embed_text_shards(
        new, old, (t for t in xbt.toy.text_corpus(300)), f"{out}/shards", shard_rows=SHARD_ROWS, verbose=False
    )
    images, captions = map(list, zip(*xbt.toy.pair_list(8)))
    with seeded(0):
        head = Projection(48, 32, hidden=16)
    data = PairData(images, captions, old_images=embed_images(old, images, cache=False, verbose=False))
    cfg = Stage2Config(image_tower="lora", epochs=1, batch_size=8, rank=2, text_head=False, confidence_weighting=False)
    result = train_stage2(new, head, data, cfg, verbose=False)
    save_file(trainable_state(result.lora, result.heads["image"]), f"{out}/rank{rank}.safetensors")
    if rank == 0:
        save_file(
            {f"projection.{k}": v.contiguous() for k, v in head.state_dict().items()}, f"{out}/stage1.safetensors"
        )
    adapter = xbt.fit(
        old,
        new,
        (t for t in xbt.toy.text_corpus(200)),
        pairs=xbt.toy.pair_list(8),
        epochs=2,
        stage2={"image_tower": "lora", "epochs": 1, "batch_size": 4, "rank": 2},
        cache=f"{out}/cache",
        verbose=False,
    )
    with open(f"{out}/fit-rank{rank}.txt", "w") as f:
        f.write(adapter.adapter_id())


if __name__ == "__main__":
    main(sys.argv[1])
