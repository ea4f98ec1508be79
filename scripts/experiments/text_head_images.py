"""Is the text head short of images? Distil it onto the pair images plus extra (old, new) image vectors.

    python -m scripts.experiments.text_head_images --world shapes --extra 0 5000 20000
    python -m scripts.experiments.text_head_images --world patterns --extra 0 5000 20000

The text head (``xbt.distillation``) copies the new model's text->image ranking of the pair images
onto the OLD vectors of those images; stage 2 sees 1,600 of them (2,000 pairs, 20 % held out).
Here the same head (stage 1 on 50,000 captions, seed 0, default ``Stage2Config``, no held-out
choice: the last epoch) is distilled onto those 1,600 images plus ``--extra`` images of the
world's ``ceiling`` split, as a gallery's re-embedded items would supply them, and each head's test
T2I Recall@K (new caption -> head -> OLD test image vectors) is printed and written as JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import xbt
from xbt import toy
from xbt.core.files import write_json
from xbt.evaluation.search import recall_at_k
from xbt.method.config import Stage2Config
from xbt.method.heads import distill_text_head
from xbt.models.embedding import embed_images, embed_texts

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default="shapes")
    p.add_argument("--extra", type=int, nargs="+", default=[0, 5000, 20000])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    out = args.out or ROOT / "benchmarks" / "out" / f"text_head_images_{args.world}.json"
    world = toy.get_world(args.world)
    old, new = world.load_clips()
    texts = world.text_corpus(50_000)
    head = xbt.fit(old, new, texts, seed=0, verbose=False).heads["text"]
    pair_images = [im for im, _ in world.pair_list(2000)][:1600]
    extra_images, _ = world.ceiling_split(max(args.extra))
    test_images, test_caps = world.test_split()
    flat = [c for cs in test_caps for c in cs]
    owner = np.repeat(np.arange(len(test_images)), [len(cs) for cs in test_caps])

    def emb(model, images):
        return embed_images(model, images, verbose=False).float()

    pair_new, pair_old, extra_new, extra_old = (
        emb(new, pair_images),
        emb(old, pair_images),
        emb(new, extra_images),
        emb(old, extra_images),
    )
    gallery, queries = emb(old, test_images), embed_texts(new, flat, verbose=False).float()
    corpus = embed_texts(new, texts, verbose=False).float()

    def t2i(h) -> dict[int, float]:
        with torch.no_grad():
            mapped = h(queries)
        return {
            k: round(100 * v, 2)
            for k, v in recall_at_k(mapped, gallery, owner, np.arange(len(test_images)), (1, 5, 10)).recall.items()
        }

    rows = {"stage 1": t2i(head)}
    print(f"{args.world} stage 1: T2I R@1/5/10 {rows['stage 1']}", flush=True)
    for n in args.extra:
        h, _, _ = distill_text_head(
            head,
            corpus,
            torch.cat([pair_new, extra_new[:n]]),
            torch.cat([pair_old, extra_old[:n]]),
            1.0 / new.logit_scale,
            Stage2Config(),
            verbose=False,
        )
        rows[f"1600 pair images + {n}"] = t2i(h)
        print(
            f"{args.world} text head on 1,600 pair images + {n:,} more: T2I R@1/5/10 "
            f"{rows[f'1600 pair images + {n}']}",
            flush=True,
        )
    write_json(out, {"world": args.world, "t2i": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
