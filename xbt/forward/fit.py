"""``xbt.fit_forward(old, new, texts, pairs=...)``: train a ``ForwardMap`` (OLD gallery vectors -> NEW space).

XBT's machinery with the roles swapped. The caption head is stage 1 turned round: both text towers
embed the same texts and a ``Projection`` learns OLD text -> NEW text, with noise on its input so it is
smooth around the text manifold (``method.stage1.train_projection``, the noise derived from the OLD
model's logit scale, the input side now). The image head starts from the caption head and, given pairs,
learns each pair image's OLD vector -> its NEW vector (InfoNCE within the batch) with the text loss
kept beside it, so what texts taught carries over. It is guarded as stage 2 is: held-out pair images
(held out by image) are searched in the NEW space by their captions' NEW vectors, and the head keeps
the epoch that ranks them best, the caption head's own state included.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from ..adapters.config import ModelRef
from ..core.errors import XBTError, need
from ..core.options import option
from ..data.pairs import as_pairs, group_images
from ..data.texts import iter_texts
from ..method.config import Stage1Config, TrainingOptions, noise_for
from ..method.guard import geometric_mean_rank, target_ranks
from ..method.losses import multi_positive_nce, stage1_loss
from ..method.stage1 import add_noise, train_projection
from ..models.embedding import embed_images, embed_texts
from .map import ForwardMap


@dataclass
class ForwardConfig(TrainingOptions):
    """The forward map's options: the caption head is ``stage1`` (a ``Stage1Config``), these are the image head's."""

    what: ClassVar[str] = "forward-map"

    epochs: int = option(30, "image-head epochs over the pair images")
    batch_size: int = option(256, "pair images per batch")
    lr: float = option(3e-4, "AdamW learning rate of the image head")
    temperature: float = option(0.05, "InfoNCE temperature of the image loss")
    text_weight: float = option(1.0, "weight of the caption head's text loss kept beside the image loss")
    val_fraction: float = option(0.2, "share of the pair images held out (by image) for the guard")
    patience: int = option(5, "epochs without a better held-out rank before stopping")
    seed: int = option(0, "seed of the split, batches and noise")

    def __post_init__(self) -> None:
        super().__post_init__()  # epochs, batch_size, lr, temperature, val_fraction, patience
        need(self.text_weight >= 0, f"text_weight must be >= 0, got {self.text_weight}")


def fit_forward(
    old: Any,
    new: Any,
    texts: Any,
    pairs: Any = None,
    seed: int = 0,
    stage1: Stage1Config | dict | None = None,
    config: ForwardConfig | dict | None = None,
    verbose: bool = True,
) -> ForwardMap:
    """Train the forward map (module docstring).

    Args:
        old, new: the ``CLIPEncoder`` models (``xbt.load_clip``) that embedded the gallery and that replaces it.
        texts: captions like the gallery's (a list, a ``datasets.Dataset`` or a ``pathlib.Path``; duplicates
            dropped): the caption head's training texts.
        pairs: image-caption pairs (``fit``'s forms: a ``datasets.Dataset``, (image, caption) rows, ...): the
            image head's. Without pairs the image head is the caption head.
        stage1: the caption head's options (``Stage1Config`` fields); noise from the OLD model when unset.
        config: the image head's options (``ForwardConfig``).
    """
    cfg1 = stage1 if isinstance(stage1, Stage1Config) else Stage1Config.from_kwargs(**{"seed": seed, **(stage1 or {})})
    if cfg1.noise_std is None:  # the noise goes on the input side, here the OLD model's texts
        cfg1 = dataclasses.replace(cfg1, noise_std=noise_for(old.logit_scale))
    cfg = (
        config if isinstance(config, ForwardConfig) else ForwardConfig.from_kwargs(**{"seed": seed, **(config or {})})
    )
    items = list(dict.fromkeys(t for t in iter_texts(texts) if t.strip()))
    if len(items) < 2:
        raise XBTError(f"the caption head needs at least 2 distinct texts, got {len(items)}")
    old_txt, new_txt = embed_texts(old, items, verbose=verbose), embed_texts(new, items, verbose=verbose)
    text_head, history = train_projection(old_txt, new_txt, cfg1, verbose=verbose)  # OLD -> NEW: roles swapped
    training: dict[str, Any] = {"n_texts": len(items), "stage1": cfg1.to_dict(), "text": history}
    image_head = copy.deepcopy(text_head)
    if pairs is not None:
        images, captions, owner = _pairs(pairs)
        vectors = {
            "old_img": embed_images(old, images, verbose=verbose),
            "new_img": embed_images(new, images, verbose=verbose),
            "new_cap": embed_texts(new, captions, verbose=verbose),
        }
        image_head, training["image"] = _train_image_head(text_head, vectors, owner, old_txt, new_txt, cfg1, cfg)
        training["forward"] = cfg.to_dict()
    else:
        training["image"] = {"skipped": "no pairs: the image head is the caption head"}
    return ForwardMap({"text": text_head, "image": image_head}, ModelRef.of(old), ModelRef.of(new), training)


def _pairs(pairs: Any) -> tuple[list, list[str], torch.Tensor]:
    """(distinct images, caption rows, int64 owner [rows]): rows with the same image share it."""
    images, captions = as_pairs(pairs)
    groups = group_images(images)
    return [images[i] for i in groups.first], captions, groups.owner


def _train_image_head(text_head, v, owner, old_txt, new_txt, cfg1: Stage1Config, cfg: ForwardConfig):
    """The image head from the caption head (module docstring); ``(head, record)``."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(v["old_img"])
    order = torch.randperm(n, generator=gen)
    n_val = max(1, round(cfg.val_fraction * n)) if n >= 10 else 0
    val, train = order[:n_val].sort().values, order[n_val:]
    val_rows = torch.isin(owner, val)
    val_owner = torch.searchsorted(val, owner[val_rows])

    def score(head) -> float:  # held-out T2I in the NEW space: each caption finds its upgraded image
        with torch.no_grad():
            return geometric_mean_rank(target_ranks(v["new_cap"][val_rows], head(v["old_img"][val]), val_owner))

    head = copy.deepcopy(text_head).train().requires_grad_(True)
    best, best_score, bad = copy.deepcopy(text_head), score(text_head) if n_val else math.inf, 0
    record = {"n_images": n, "n_val": n_val, "val_geo_mean_rank": [best_score], "kept_epoch": 0}
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
    for epoch in tqdm(range(1, cfg.epochs + 1), desc="forward map (image head)", leave=False, disable=True):
        perm = train[torch.randperm(len(train), generator=gen)]
        for s in range(0, len(perm), cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            if len(b) < 2:
                continue
            z = head(v["old_img"][b])
            loss = multi_positive_nce(z, v["new_img"][b], torch.eye(len(b), dtype=torch.bool), cfg.temperature)
            if cfg.text_weight:
                t = torch.randint(len(old_txt), (cfg.batch_size,), generator=gen)
                noised = add_noise(old_txt[t], cfg1.noise_std, gen)
                loss = loss + cfg.text_weight * stage1_loss(head(noised), new_txt[t], cfg1.temperature, 0.5)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if not n_val:
            best = head
            continue
        s = score(head.eval())
        head.train()
        record["val_geo_mean_rank"].append(s)
        if s < best_score:
            best, best_score, bad, record["kept_epoch"] = copy.deepcopy(head), s, 0, epoch
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    return best.eval().requires_grad_(False), record
