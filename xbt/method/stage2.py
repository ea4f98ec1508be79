"""XBT stage 2: two query paths trained on image-caption pairs, each kept only if held-out pairs say so.

Stage 1 left one head that maps new text embeddings where the old model put the same texts. Stage 2
gives each kind of query its own path into the old space; pairs are grouped by image (rows with the
same image content are one image with several captions) and held out by image.

- **image queries** (they search the OLD caption gallery): by default a head on the frozen NEW image
  tower (``xbt.method.heads.train_image_head``); with ``image_tower="lora"``, PEFT LoRA on the tower
  and a head ranking a caption bank (``xbt.method.image_path``);
- **text queries** (they search the OLD image gallery): a head on the frozen new text tower,
  distilled from the new model's own text->image ranking (``xbt.method.heads.distill_text_head``).

The guard: a share of the pair images (``val_fraction``) is held out, and each path keeps the state
that searches best on them (``xbt.method.guard``), stage 1 included, so stage 2 never returns a path
its own validation says is worse; under ``SMALL_VAL`` held-out images the text path is scored on
folds of all pairs (``text_folds``). What was kept, and why, and each kept path against the OLD
model's own queries on the same searches go into the training record and the model card. The OLD
vectors of the pairs come from ``xbt.fit`` (embedded with the old model, or the user's stored
ones). The recipe, its options and what each earns: docs/method.md and BENCHMARKS.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

from ..core.distributed import broadcast_module
from ..core.errors import XBTError
from ..core.seeding import seeded
from ..data.pairs import group_images
from ..models.embedding import embed_images, embed_texts
from ..models.encoders import CLIPEncoder, best_device
from ..models.head import Projection
from .config import HEAD_TEMPERATURE_FACTOR, Stage2Config
from .guard import T2I_MEASURE, i2t_ranks, say_versus_old, t2i_ranks, versus_old_model
from .heads import (
    I2T_HEAD_MEASURE,
    ImageHeadInputs,
    distill_text_head,
    fold_scores,
    train_image_head,
)
from .image_path import I2T_MEASURE, ImagePathInputs, train_image_path
from .losses import pair_confidence, spread_temperature

#: distractor captions (stage-1 texts no path trains on) in the held-out image->caption search
VAL_DISTRACTORS = 5_000
SMALL_VAL = 200  # fewer held-out pairs than this: the text head's epoch is chosen on folds of all pairs


@dataclass
class PairData:
    """What stage 2 trains on; ``xbt.fit`` assembles it.

    Attributes:
        images, captions: the pairs, ``images[i]`` described by ``captions[i]``.
        old_images, old_captions: OLD-model vectors of the pair images / captions, float32
            [n, d_old] unit rows, or ``None``.
        texts: the stage-1 captions (caption bank, distillation queries, distractors), or ``None``.
        texts_new, texts_old: their NEW / OLD text embeddings [len(texts), d], or ``None``.
        unlabeled_new, unlabeled_old: images without captions under both models [u, d_new] / [u, d_old]
            (the image head's ``old_images`` run aligns them too), or ``None``.
        stage1_temperature: the temperature stage 1 trained with (its text loss sits beside the image head's
            ``old_images`` run).
    """

    images: list[Image.Image]
    captions: list[str]
    old_images: torch.Tensor | None = None
    old_captions: torch.Tensor | None = None
    texts: list[str] | None = None
    texts_new: torch.Tensor | None = None
    texts_old: torch.Tensor | None = None
    unlabeled_new: torch.Tensor | None = None
    unlabeled_old: torch.Tensor | None = None
    stage1_temperature: float = 0.05

    def __post_init__(self) -> None:
        n = len(self.images)
        if n != len(self.captions):
            raise XBTError(f"stage 2 got {n} images but {len(self.captions)} captions; pass matched pairs")
        if n < 4:
            raise XBTError(f"stage 2 needs at least 4 image-caption pairs (it contrasts them), got {n}")
        for name in ("old_images", "old_captions"):
            v = getattr(self, name)
            if v is not None:
                if v.ndim != 2 or len(v) != n:
                    raise XBTError(
                        f"{name} must be [{n}, d_old] (one OLD-model vector per pair), got {tuple(v.shape)}"
                    )
                setattr(self, name, F.normalize(v.float(), dim=-1))
        if (self.unlabeled_new is None) != (self.unlabeled_old is None) or (
            self.unlabeled_new is not None and len(self.unlabeled_new) != len(self.unlabeled_old)
        ):
            raise XBTError("unlabeled images need both their NEW and their OLD vectors, one row each")
        if self.unlabeled_new is not None:
            self.unlabeled_new = F.normalize(self.unlabeled_new.float(), dim=-1)
            self.unlabeled_old = F.normalize(self.unlabeled_old.float(), dim=-1)
        for name in ("texts_new", "texts_old"):
            v = getattr(self, name)
            if v is not None and (self.texts is None or len(v) != len(self.texts)):
                raise XBTError(
                    f"{name} has {len(v)} rows for {0 if self.texts is None else len(self.texts)} texts; pass one "
                    "per text"
                )


@dataclass
class Stage2Result:
    """Stage 2's outcome: a head per query modality, the LoRA encoder (``None`` if the image path kept stage 1),
    the record."""

    heads: dict[str, Projection]
    lora: CLIPEncoder | None
    record: dict = field(default_factory=dict)


def train_stage2(
    new: CLIPEncoder,
    stage1_head: Projection,
    data: PairData,
    config: Stage2Config | None = None,
    device: str | torch.device | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    verbose: bool = True,
) -> Stage2Result:
    """Train the text head and the image path on ``data``; keep each path's held-out-best state.

    Args:
        new: the NEW model (unchanged; LoRA goes into a copy).
        stage1_head: the stage-1 projection (copied; also each path's stage-1 candidate).
        data: the pairs and their old vectors, and the stage-1 texts (``PairData``).
        checkpoint_dir: image-path checkpoints after every epoch; a matching one is resumed from.
        on_epoch_end: called as ``fn(epoch, history)`` after each image-path epoch.

    Returns:
        ``Stage2Result``: ``heads["text"]`` / ``heads["image"]``, the LoRA encoder when the image
        path kept a stage-2 state (its text tower is untouched), and the record (split sizes, each
        path's ``PathChoice``, histories). Randomness comes from ``config.seed`` alone; the caller's
        global RNG is left untouched.
    """
    cfg = config or Stage2Config()
    with seeded(cfg.seed):  # LoRA's initialisation and dropout draw from the global RNG
        return _train(new, stage1_head.eval(), data, cfg, best_device(device), checkpoint_dir, on_epoch_end, verbose)


def _train(new, stage1_head, data, cfg, dev, checkpoint_dir, on_epoch_end, verbose) -> Stage2Result:
    if checkpoint_dir is not None and cfg.image_tower != "lora":
        raise XBTError(
            "checkpoint_dir resumes LoRA training (image_tower='lora'); the frozen image tower trains heads on cached "
            "features in seconds and has nothing to resume: drop checkpoint_dir, or pass image_tower='lora'"
        )
    groups = group_images(data.images)
    n_img, owner = groups.n_images, groups.owner
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(n_img, generator=gen)
    n_val = max(2, int(round(n_img * cfg.val_fraction))) if cfg.val_fraction > 0 and n_img >= 20 else 0
    val_imgs, train_imgs = perm[:n_val], perm[n_val:]  # held out by image: no held-out caption's image trains
    rows = groups.rows
    val, train = rows(val_imgs), rows(train_imgs)
    new.to(dev)
    distinct = [data.images[i] for i in groups.first]
    pixels = new.preprocess_images(distinct).cpu()
    new_img = embed_images(new, pixels, device=dev, cache=False, verbose=False)  # [n_img, d_new]
    new_txt = embed_texts(new, data.captions, device=dev, cache=False, verbose=False)
    old_img = data.old_images[groups.first] if data.old_images is not None else None  # [n_img, d_old]
    row_img = new_img[owner]  # the rows' images, for the per-row searches
    record: dict = {
        "n_train": len(train),
        "n_val": len(val),
        "n_images": n_img,
        "n_val_images": n_val,
        "old_vectors": data.old_images is not None,
        "image_tower": cfg.image_tower,
    }

    # Stage-1 texts, pair captions left out (a pair caption among the negatives would be a false one):
    # texts to train on, and distractors for the held-out image->caption search.
    texts_new, free_ids, distractor_ids = _split_texts(new, data, gen, dev)
    distractors_new = texts_new[distractor_ids] if texts_new is not None else new_txt[:0]
    if data.texts_old is not None:
        distractors_old = data.texts_old[distractor_ids]
    else:
        distractors_old = stage1_head.in_chunks(distractors_new)

    heads = {"text": stage1_head, "image": stage1_head}
    if cfg.text_head and data.old_images is not None:
        corpus = (
            texts_new[_sample(len(texts_new), cfg.distill_texts, gen)] if texts_new is not None else new_txt[train]
        )
        n_folds = min(cfg.text_folds or (5 if n_val < SMALL_VAL else 1), n_img // n_val) if n_val and cfg.guard else 1
        folds = [rows(perm[i * n_val : (i + 1) * n_val]) for i in range(n_folds)]  # the first is the held-out split
        others = (
            fold_scores(
                stage1_head,
                corpus,
                row_img,
                data.old_images,
                new_txt,
                folds,
                1.0 / new.logit_scale,
                cfg,
                verbose=verbose,
            )
            if n_folds > 1
            else None
        )
        slot = torch.full((n_img,), -1)  # each image's row among the training images (-1: not trained on)
        slot[train_imgs] = torch.arange(len(train_imgs))
        heads["text"], choice, history = distill_text_head(
            stage1_head,
            corpus,
            new_img[train_imgs],  # each training image once, however many captions it has
            old_img[train_imgs],
            1.0 / new.logit_scale,
            cfg,
            val_texts_new=new_txt[val] if n_val else None,
            val_images_old=data.old_images[val] if n_val else None,
            verbose=verbose,
            other_folds=others,
            pair_texts_new=new_txt[train],
            pair_owner=slot[owner[train]],
        )
        record["text"] = {
            "choice": choice.to_dict() if choice else None,
            "history": history,
            "distill_texts": len(corpus),
            "folds": n_folds,
        }
    else:
        why = "text_head=False" if not cfg.text_head else "no OLD vectors of the pair images to distil onto"
        record["text"] = {"choice": None, "kept": "stage 1", "reason": f"text head not trained: {why}"}

    # The image path's held-out search: old caption vectors (or their stage-1 stand-in) among distractors.
    old_val_caps = data.old_captions[val] if data.old_captions is not None else stage1_head.in_chunks(new_txt[val])
    val_gallery = torch.cat([old_val_caps, distractors_old])
    if cfg.image_tower == "frozen":
        lora = None
        heads["image"], image_record, image_ranks, old_ranks = _frozen_image_path(
            stage1_head,
            data,
            cfg,
            new,
            new_img,
            old_img,
            owner,
            train_imgs,
            val_imgs,
            val,
            val_gallery,
            texts_new,
            free_ids,
            verbose,
        )
        val_weights = None
    else:
        temperature = cfg.confidence_temperature or 1.0 / new.logit_scale
        val_weights = (
            pair_confidence(row_img[val], torch.cat([new_txt[val], distractors_new]), temperature) if n_val else None
        )
        inputs = ImagePathInputs(
            pixels[owner],
            row_img,
            new_txt,
            train,
            val,
            texts_new,
            free_ids[: cfg.caption_bank_size].sort().values,
            val_gallery,
            val_weights,
            temperature,
        )
        lora, heads["image"], image_record, image_ranks = train_image_path(
            new, stage1_head, data, cfg, dev, inputs, checkpoint_dir, on_epoch_end, verbose
        )
        old_ranks = (
            i2t_ranks(data.old_images[val].float(), val_gallery.float().cpu())
            if n_val and data.old_images is not None
            else None
        )
    if heads["text"] is not stage1_head:  # distilled in every process alike; rank 0's is everyone's
        broadcast_module(heads["text"])
    if heads["image"] is not stage1_head and lora is None:
        broadcast_module(heads["image"])
    record["image"] = image_record
    record["versus_old_model"] = _versus_old(
        heads["text"],
        image_ranks,
        old_ranks,
        data,
        val,
        new_txt,
        val_weights,
        I2T_HEAD_MEASURE if cfg.image_tower == "frozen" else I2T_MEASURE,
        real_distractors=texts_new is None or data.texts_old is not None,
    )
    say_versus_old(record["versus_old_model"], verbose)
    return Stage2Result(heads=heads, lora=lora, record=record)


def _frozen_image_path(
    stage1_head,
    data,
    cfg,
    new,
    new_img,
    old_img,
    owner,
    train_imgs,
    val_imgs,
    val,
    val_gallery,
    texts_new,
    free_ids,
    verbose,
):
    """The image head on the frozen image tower (``heads.train_image_head``); ``(head, record, its held-out ranks,
    the old model's image queries' ranks on the same search)``."""
    position = torch.full((len(new_img),), -1, dtype=torch.long)
    position[val_imgs] = torch.arange(len(val_imgs))
    val_owner = torch.cat([position[owner[val]], torch.full((len(val_gallery) - len(val),), -1, dtype=torch.long)])
    prior = texts_new is not None and data.texts_old is not None
    spread_of = data.texts_old if data.texts_old is not None else data.old_captions
    inputs = ImageHeadInputs(
        new_img,
        old_img,
        data.old_captions,
        owner,
        train_imgs,
        val_imgs,
        val_gallery,
        val_owner,
        texts_new[free_ids] if prior else None,
        data.texts_old[free_ids] if prior else None,
        cfg.temperature or spread_temperature(spread_of, HEAD_TEMPERATURE_FACTOR),
        data.unlabeled_new,
        data.unlabeled_old,
        data.stage1_temperature,
    )
    head, choice, history, ranks, old_ranks = train_image_head(stage1_head, inputs, cfg, verbose=verbose)
    record = {
        "choice": choice.to_dict() if choice else None,
        "history": history,
        "temperature": inputs.temperature,
        "unlabeled_images": 0 if data.unlabeled_new is None else len(data.unlabeled_new),
    }
    return head, record, ranks, old_ranks


def _versus_old(
    text_head, image_ranks, old_image_ranks, data, val, new_txt, val_weights, i2t_measure, real_distractors: bool
) -> dict:
    """Each kept path against the OLD model's own queries on the same held-out searches (``versus_old_model``).

    ``image_ranks`` / ``old_image_ranks``: the kept image path's held-out ranks and the old model's image queries'
    on the same search (a diverged path ranks last).
    """
    if not len(val) or data.old_images is None or data.old_captions is None:
        return {"skipped": "needs held-out pairs and the OLD vectors of their images and captions"}
    old_imgs, old_caps = data.old_images[val].float(), data.old_captions[val].float()
    out = {
        "text": versus_old_model(
            "text", t2i_ranks(text_head.in_chunks(new_txt[val]), old_imgs), t2i_ranks(old_caps, old_imgs), T2I_MEASURE
        )
    }
    if real_distractors and image_ranks is not None and old_image_ranks is not None:
        # (stage-1 stand-ins for the distractors would favour the adapter's own space)
        out["image"] = versus_old_model("image", image_ranks, old_image_ranks, i2t_measure, val_weights)
    return out


def _sample(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """``min(n, k)`` distinct indices of ``range(n)``, seeded, in increasing order."""
    return torch.arange(n) if n <= k else torch.randperm(n, generator=gen)[:k].sort().values


def _split_texts(new, data, gen, dev):
    """The stage-1 texts' NEW embeddings, and disjoint index sets: texts to train on (in a seeded order) and
    held-out distractors."""
    if not data.texts:
        return None, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    texts_new = (
        data.texts_new
        if data.texts_new is not None
        else embed_texts(new, data.texts, device=dev, cache=False, verbose=False)
    )
    paired = set(data.captions)
    free = torch.tensor([i for i, t in enumerate(data.texts) if t not in paired], dtype=torch.long)
    free = free[torch.randperm(len(free), generator=gen)]
    n_distractors = min(VAL_DISTRACTORS, len(free) // 5)
    distractors, rest = free[:n_distractors].sort().values, free[n_distractors:]
    return F.normalize(texts_new.float(), dim=-1), rest, distractors
