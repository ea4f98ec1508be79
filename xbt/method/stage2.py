"""XBT stage 2: two query paths trained on image-caption pairs, each kept only if held-out pairs say so.

Stage 1 left one head that maps new text embeddings where the old model put the same texts. Stage 2
gives each kind of query its own path into the old space:

- **image queries** (they search the OLD caption gallery): PEFT LoRA on the NEW model's image
  tower (``xbt.lora``) and an image head, both trained so that each pair image ranks its own
  caption first among a frozen caption bank - the training pair captions plus up to
  ``caption_bank_size`` stage-1 texts, at their stage-1 places (``caption_bank="stage1"``) or at
  the OLD model's caption vectors (``"old"``). Each pair is weighted by the frozen new model's own
  confidence in it (``xbt.losses.pair_confidence``): a vague caption matches many images, and
  ranking it first for one of them would pull image queries towards vague captions. A keep term
  holds projected images near their stage-1 place. The base model stays in eval mode throughout
  (batch-norm statistics of ResNet towers are base weights, never trained);
- **text queries** (they search the OLD image gallery): a head on the frozen new text tower,
  distilled from the new model's own text->image ranking onto the OLD vectors of the pair images
  (``xbt.distillation``).

The guard: a share of the pairs (``val_fraction``) is held out, and each path keeps the state that
searches best on them (``xbt.validation``: text queries against the old vectors of held-out images,
image queries against the old vectors of held-out captions among distractor captions), stage 1
included. A path whose every stage-2 state is worse than stage 1 on its held-out pairs stays at
stage 1, so stage 2 never returns a path that its own validation says is worse. A few hundred
pairs hold out too few to tell a gain from noise: under ``SMALL_VAL`` held-out pairs the text
path is scored on folds of all pairs and must beat stage 1 by more than one standard error
(``text_folds``; the image path, LoRA on the image tower, is too costly to train per fold). What was kept, and
why, goes into the training record (and so into the model card), and so does each kept path
against the OLD model's own queries on the same held-out searches: whether the upgrade is
backward compatible on the user's pairs, known before any gallery is touched.

The OLD-model vectors of the pairs come from ``xbt.fit``, which embeds the pairs with the old
model it is given (or takes the user's stored gallery vectors). Without them the text head is not
trained and image queries are validated against stage-1 places, the old captions' stand-in.
With ``checkpoint_dir`` the image path (``xbt.method.image_path``) saves its state after every epoch and
an interrupted run resumes where it stopped.
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
from ..models.embedding import embed_images, embed_texts
from ..models.encoders import CLIPEncoder, best_device
from ..models.head import Projection
from .config import Stage2Config
from .guard import i2t_ranks, say_versus_old, t2i_ranks, versus_old_model
from .image_path import I2T_MEASURE, ImagePathInputs, train_image_path
from .losses import pair_confidence
from .text_head import T2I_MEASURE, distill_text_head, fold_scores

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
    """

    images: list[Image.Image]
    captions: list[str]
    old_images: torch.Tensor | None = None
    old_captions: torch.Tensor | None = None
    texts: list[str] | None = None
    texts_new: torch.Tensor | None = None
    texts_old: torch.Tensor | None = None

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
    n = len(data.images)
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(n, generator=gen)
    n_val = max(2, int(round(n * cfg.val_fraction))) if cfg.val_fraction > 0 and n >= 20 else 0
    val, train = perm[:n_val], perm[n_val:]
    new.to(dev)
    pixels = new.preprocess_images(data.images).cpu()
    new_img = embed_images(new, pixels, device=dev, cache=False, verbose=False)
    new_txt = embed_texts(new, data.captions, device=dev, cache=False, verbose=False)
    record: dict = {"n_train": len(train), "n_val": n_val, "old_vectors": data.old_images is not None}

    # Stage-1 texts, pair captions left out (a pair caption among the negatives would be a false one):
    # a training caption bank, and distractors for the held-out image->caption search.
    texts_new, bank_ids, distractor_ids = _split_texts(new, data, cfg, gen, dev)
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
        n_folds = min(cfg.text_folds or (5 if n_val < SMALL_VAL else 1), n // n_val) if n_val and cfg.guard else 1
        folds = [perm[i * n_val : (i + 1) * n_val] for i in range(n_folds)]  # the first is the held-out split
        others = (
            fold_scores(
                stage1_head,
                corpus,
                new_img,
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
        heads["text"], choice, history = distill_text_head(
            stage1_head,
            corpus,
            new_img[train],
            data.old_images[train],
            1.0 / new.logit_scale,
            cfg,
            val_texts_new=new_txt[val] if n_val else None,
            val_images_old=data.old_images[val] if n_val else None,
            verbose=verbose,
            other_folds=others,
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
    temperature = cfg.confidence_temperature or 1.0 / new.logit_scale
    val_weights = (
        pair_confidence(new_img[val], torch.cat([new_txt[val], distractors_new]), temperature) if n_val else None
    )
    inputs = ImagePathInputs(
        pixels, new_img, new_txt, train, val, texts_new, bank_ids, val_gallery, val_weights, temperature
    )
    lora, image_head, image_record, image_ranks = train_image_path(
        new, stage1_head, data, cfg, dev, inputs, checkpoint_dir, on_epoch_end, verbose
    )
    heads["image"] = image_head
    if (
        heads["text"] is not stage1_head
    ):  # distilled in every process alike; rank 0's is everyone's, whatever the device
        broadcast_module(heads["text"])
    record["image"] = image_record
    record["versus_old_model"] = _versus_old(
        heads["text"],
        image_ranks,
        data,
        val,
        new_txt,
        val_gallery,
        val_weights,
        real_distractors=texts_new is None or data.texts_old is not None,
    )
    say_versus_old(record["versus_old_model"], verbose)
    return Stage2Result(heads=heads, lora=lora, record=record)


def _versus_old(text_head, image_ranks, data, val, new_txt, val_gallery, val_weights, real_distractors: bool) -> dict:
    """Each kept path against the OLD model's own queries on the same held-out searches (``versus_old_model``).

    ``image_ranks``: the kept image path's held-out ranks (``_image_path``; a diverged path ranks last).
    """
    if not len(val) or data.old_images is None or data.old_captions is None:
        return {"skipped": "needs held-out pairs and the OLD vectors of their images and captions"}
    old_imgs, old_caps = data.old_images[val].float(), data.old_captions[val].float()
    out = {
        "text": versus_old_model(
            "text", t2i_ranks(text_head.in_chunks(new_txt[val]), old_imgs), t2i_ranks(old_caps, old_imgs), T2I_MEASURE
        )
    }
    if (
        real_distractors and image_ranks is not None
    ):  # (stage-1 stand-ins for the distractors would favour the adapter's own space)
        out["image"] = versus_old_model(
            "image", image_ranks, i2t_ranks(old_imgs, val_gallery.float().cpu()), I2T_MEASURE, val_weights
        )
    return out


def _sample(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """``min(n, k)`` distinct indices of ``range(n)``, seeded, in increasing order."""
    return torch.arange(n) if n <= k else torch.randperm(n, generator=gen)[:k].sort().values


def _split_texts(new, data, cfg, gen, dev):
    """The stage-1 texts' NEW embeddings, and disjoint index sets: caption bank and held-out distractors."""
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
    return F.normalize(texts_new.float(), dim=-1), rest[: cfg.caption_bank_size].sort().values, distractors
