"""``xbt.fit_forward(old, new, texts, pairs=...)``: train a ``ForwardMap`` (OLD gallery vectors -> NEW space).

XBT's machinery with the roles swapped. Stage 1 turned round first: both text towers embed the same
texts and a ``Projection`` learns OLD text -> NEW text, with noise on its input so it is smooth around
the text manifold and carries over to images (``method.stage1.train_projection``, the noise derived from
the OLD model's logit scale, the input side now). Given pairs, each gallery modality's head starts from
it and learns the search it will serve, as stage 2 does on the query side: upgraded pair images found
by their captions' NEW vectors, upgraded captions by their images' NEW vectors (multi-positive InfoNCE),
with the text loss kept beside it. Each is guarded on held-out pair images (held out by image): the
epoch whose held-out search ranks best is kept, stage 1's own state included.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..adapters.config import ModelRef
from ..core.errors import XBTError, need
from ..core.options import option
from ..data.pairs import as_pairs, group_images, rows_of
from ..data.texts import iter_texts
from ..method.config import Stage1Config, TrainingOptions, noise_for
from ..method.guard import geometric_mean_rank, owned_ranks, target_ranks
from ..method.losses import multi_positive_nce, stage1_loss
from ..method.stage1 import add_noise, train_projection
from ..models.embedding import embed_images, embed_texts
from .map import MODALITIES, ForwardMap


@dataclass
class ForwardConfig(TrainingOptions):
    """The forward map's options on pairs (the text-only start is ``stage1``, a ``Stage1Config``)."""

    what: ClassVar[str] = "forward-map"

    epochs: int = option(30, "epochs over the pair images, per head")
    batch_size: int = option(256, "pair images per batch")
    lr: float = option(3e-4, "AdamW learning rate of the heads")
    temperature: float = option(0.05, "InfoNCE temperature of the cross-modal loss")
    text_weight: float = option(1.0, "weight of stage 1's text loss kept beside the cross-modal loss")
    align_weight: float = option(
        1.0, "weight of the loss that puts each upgraded vector on the item's own NEW vector (so they mix)"
    )
    val_fraction: float = option(0.2, "share of the pair images held out (by image) for the guard")
    patience: int = option(5, "epochs without a better held-out rank before stopping")
    seed: int = option(0, "seed of the split, batches and noise")

    def __post_init__(self) -> None:
        super().__post_init__()  # epochs, batch_size, lr, temperature, val_fraction, patience
        need(self.text_weight >= 0, f"text_weight must be >= 0, got {self.text_weight}")
        need(self.align_weight >= 0, f"align_weight must be >= 0, got {self.align_weight}")


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
            heads' (one row per caption, all of an image's captions). Without pairs both heads are stage 1's.
        stage1: the caption head's options (``Stage1Config`` fields); noise from the OLD model when unset.
        config: the heads' options on pairs (``ForwardConfig``).
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
    heads = {"text": text_head, "image": copy.deepcopy(text_head)}
    if pairs is not None:
        images, captions, owner = _pairs(pairs)
        v = {
            "old_img": embed_images(old, images, verbose=verbose),
            "new_img": embed_images(new, images, verbose=verbose),
            "old_cap": embed_texts(old, captions, verbose=verbose),
            "new_cap": embed_texts(new, captions, verbose=verbose),
        }
        prior = (old_txt, new_txt, cfg1)
        for modality in MODALITIES:  # each gallery modality is searched by the other's new queries
            heads[modality], training[modality + "_head"] = _train_head(text_head, modality, v, owner, prior, cfg)
        training["forward"] = cfg.to_dict()
    else:
        training["image_head"] = {"skipped": "no pairs: the image head is the caption head"}
    return ForwardMap(heads, ModelRef.of(old), ModelRef.of(new), training)


def _pairs(pairs: Any) -> tuple[list, list[str], torch.Tensor]:
    """(distinct images, caption rows, int64 owner [rows]): rows with the same image share it."""
    images, captions = as_pairs(pairs)
    groups = group_images(images)
    return [images[i] for i in groups.first], captions, groups.owner


def _train_head(start, modality: str, v: dict, owner: torch.Tensor, prior: tuple, cfg: ForwardConfig):
    """One gallery modality's head from the caption head, trained on the search it serves; ``(head, record)``.

    ``"image"``: pair images' upgraded OLD vectors are searched by their captions' NEW vectors (text->image);
    ``"text"``: captions' upgraded OLD vectors by their images' NEW vectors (image->text, any own caption). The
    caption head's text loss stays beside it (``text_weight``). Held out by image; the held-out geometric-mean
    rank of the right items decides the epoch kept, the caption head's own state included.
    """
    old_txt, new_txt, cfg1 = prior
    gen = torch.Generator().manual_seed(cfg.seed + (modality == "text"))
    n = len(v["old_img"])
    order = torch.randperm(n, generator=gen)
    n_val = max(1, round(cfg.val_fraction * n)) if n >= 10 else 0
    val, train = order[:n_val].sort().values, order[n_val:]

    def loss_and_ranks(head, images: torch.Tensor, ranks: bool):
        rows = rows_of(owner, images)
        mine = torch.searchsorted(images.sort().values, owner[rows]) if ranks else None
        if ranks:
            if modality == "image":
                return target_ranks(v["new_cap"][rows], head(v["old_img"][images.sort().values]), mine)
            return owned_ranks(v["new_img"][images.sort().values], head(v["old_cap"][rows]), mine)
        if modality == "image":  # captions (queries) find their image among the batch's upgraded images
            gallery, queries, own = head(v["old_img"][images]), v["new_cap"][rows], v["new_img"][images]
            positive = owner[rows][:, None] == images[None, :]
        else:  # images (queries) find any of their captions among the batch's upgraded captions
            gallery, queries, own = head(v["old_cap"][rows]), v["new_img"][images], v["new_cap"][rows]
            positive = images[:, None] == owner[rows][None, :]
        loss = multi_positive_nce(queries, gallery, positive, cfg.temperature)
        if cfg.align_weight:  # each upgraded vector finds the item's own NEW vector: upgraded and new items mix
            eye = torch.eye(len(gallery), dtype=torch.bool)
            loss = loss + cfg.align_weight * multi_positive_nce(gallery, own, eye, cfg.temperature)
        return loss

    def score(head) -> float:
        with torch.no_grad():
            return geometric_mean_rank(loss_and_ranks(head.eval(), val, True))

    head = copy.deepcopy(start).train().requires_grad_(True)
    best, best_score, bad = copy.deepcopy(start), score(start) if n_val else math.inf, 0
    record = {"n_images": n, "n_val": n_val, "val_geo_mean_rank": [best_score], "kept_epoch": 0}
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
    for epoch in range(1, cfg.epochs + 1):
        head.train()
        perm = train[torch.randperm(len(train), generator=gen)]
        for s in range(0, len(perm), cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            if len(b) < 2:
                continue
            loss = loss_and_ranks(head, b, False)
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
        record["val_geo_mean_rank"].append(score(head))
        if record["val_geo_mean_rank"][-1] < best_score:
            best, best_score, bad, record["kept_epoch"] = (
                copy.deepcopy(head),
                record["val_geo_mean_rank"][-1],
                0,
                epoch,
            )
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    return best.eval().requires_grad_(False), record
