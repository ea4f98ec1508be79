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
With ``checkpoint_dir`` the image path saves its state after every epoch (``xbt.checkpoint``) and
an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, load_trainable_state, restore_optimizer, run_key, save_checkpoint, trainable_state
from .config import Stage2Config
from .distillation import T2I_MEASURE, distill_text_head, fold_scores
from .distributed import broadcast_module, mean_across, world
from .embed import embed_images, embed_texts
from .encoders import CLIPEncoder, best_device
from .errors import XBTError
from .losses import caption_ranking, cosine_gap, pair_confidence
from .lora import add_lora, frozen_train_mode
from .stage1 import Projection, seeded
from .validation import PathChoice, geometric_mean_rank, i2t_ranks, say_versus_old, t2i_ranks, versus_old_model

#: distractor captions (stage-1 texts no path trains on) in the held-out image->caption search
VAL_DISTRACTORS = 5_000
SMALL_VAL = 200  # fewer held-out pairs than this: the text head's epoch is chosen on folds of all pairs
I2T_MEASURE = ("I2T: held-out pair images search the OLD vectors of the held-out pair captions among distractor "
               "captions; geometric-mean rank weighted by the new model's confidence in each pair")


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
                    raise XBTError(f"{name} must be [{n}, d_old] (one OLD-model vector per pair), got {tuple(v.shape)}")
                setattr(self, name, F.normalize(v.float(), dim=-1))
        for name in ("texts_new", "texts_old"):
            v = getattr(self, name)
            if v is not None and (self.texts is None or len(v) != len(self.texts)):
                raise XBTError(f"{name} has {len(v)} rows for {0 if self.texts is None else len(self.texts)} texts; pass one per text")


@dataclass
class Stage2Result:
    """Stage 2's outcome: a head per query modality, the LoRA encoder (``None`` if the image path kept stage 1), the record."""

    heads: dict[str, Projection]
    lora: CLIPEncoder | None
    record: dict = field(default_factory=dict)


def _autocast(device: torch.device, precision: str):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext(), precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), precision


def train_stage2(new: CLIPEncoder, stage1_head: Projection, data: PairData, config: Stage2Config | None = None,
                 device: str | torch.device | None = None, checkpoint_dir: str | os.PathLike | None = None,
                 on_epoch_end: Callable[[int, dict], None] | None = None, verbose: bool = True) -> Stage2Result:
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
        corpus = texts_new[_sample(len(texts_new), cfg.distill_texts, gen)] if texts_new is not None else new_txt[train]
        n_folds = min(cfg.text_folds or (5 if n_val < SMALL_VAL else 1), n // n_val) if n_val and cfg.guard else 1
        folds = [perm[i * n_val : (i + 1) * n_val] for i in range(n_folds)]  # the first is the held-out split
        others = fold_scores(stage1_head, corpus, new_img, data.old_images, new_txt, folds, 1.0 / new.logit_scale, cfg,
                             verbose=verbose) if n_folds > 1 else None
        heads["text"], choice, history = distill_text_head(
            stage1_head, corpus, new_img[train], data.old_images[train], 1.0 / new.logit_scale, cfg,
            val_texts_new=new_txt[val] if n_val else None, val_images_old=data.old_images[val] if n_val else None,
            verbose=verbose, other_folds=others)
        record["text"] = {"choice": choice.to_dict() if choice else None, "history": history, "distill_texts": len(corpus),
                          "folds": n_folds}
    else:
        why = "text_head=False" if not cfg.text_head else "no OLD vectors of the pair images to distil onto"
        record["text"] = {"choice": None, "kept": "stage 1", "reason": f"text head not trained: {why}"}

    # The image path's held-out search: old caption vectors (or their stage-1 stand-in) among distractors.
    old_val_caps = data.old_captions[val] if data.old_captions is not None else stage1_head.in_chunks(new_txt[val])
    val_gallery = torch.cat([old_val_caps, distractors_old])
    temperature = cfg.confidence_temperature or 1.0 / new.logit_scale
    val_weights = pair_confidence(new_img[val], torch.cat([new_txt[val], distractors_new]), temperature) if n_val else None
    lora, image_head, image_record, image_ranks = _image_path(new, stage1_head, data, cfg, dev, pixels, new_img, new_txt, train, val,
                                                 texts_new, bank_ids, val_gallery, val_weights, temperature,
                                                 checkpoint_dir, on_epoch_end, verbose)
    heads["image"] = image_head
    if heads["text"] is not stage1_head:
        broadcast_module(heads["text"])  # distilled in every process alike; rank 0's is everyone's, whatever the device
    record["image"] = image_record
    record["versus_old_model"] = _versus_old(heads["text"], image_ranks, data, val, new_txt, val_gallery, val_weights,
                                             real_distractors=texts_new is None or data.texts_old is not None)
    say_versus_old(record["versus_old_model"], verbose)
    return Stage2Result(heads=heads, lora=lora, record=record)


def _versus_old(text_head, image_ranks, data, val, new_txt, val_gallery, val_weights, real_distractors: bool) -> dict:
    """Each kept path against the OLD model's own queries on the same held-out searches (``versus_old_model``).

    ``image_ranks``: the kept image path's held-out ranks (``_image_path``; a diverged path ranks last).
    """
    if not len(val) or data.old_images is None or data.old_captions is None:
        return {"skipped": "needs held-out pairs and the OLD vectors of their images and captions"}
    old_imgs, old_caps = data.old_images[val].float(), data.old_captions[val].float()
    out = {"text": versus_old_model("text", t2i_ranks(text_head.in_chunks(new_txt[val]), old_imgs),
                                    t2i_ranks(old_caps, old_imgs), T2I_MEASURE)}
    if real_distractors and image_ranks is not None:  # (stage-1 stand-ins for the distractors would favour the adapter's own space)
        out["image"] = versus_old_model("image", image_ranks, i2t_ranks(old_imgs, val_gallery.float().cpu()), I2T_MEASURE, val_weights)
    return out


def _sample(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """``min(n, k)`` distinct indices of ``range(n)``, seeded, in increasing order."""
    return torch.arange(n) if n <= k else torch.randperm(n, generator=gen)[:k].sort().values


def _split_texts(new, data, cfg, gen, dev):
    """The stage-1 texts' NEW embeddings, and disjoint index sets: caption bank and held-out distractors."""
    if not data.texts:
        return None, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    texts_new = data.texts_new if data.texts_new is not None else embed_texts(new, data.texts, device=dev, cache=False, verbose=False)
    paired = set(data.captions)
    free = torch.tensor([i for i, t in enumerate(data.texts) if t not in paired], dtype=torch.long)
    free = free[torch.randperm(len(free), generator=gen)]
    n_distractors = min(VAL_DISTRACTORS, len(free) // 5)
    distractors, rest = free[:n_distractors].sort().values, free[n_distractors:]
    return F.normalize(texts_new.float(), dim=-1), rest[: cfg.caption_bank_size].sort().values, distractors


class _ImagePath(nn.Module):
    """The image path as one module (what ``DistributedDataParallel`` wraps): LoRA image tower, then the head."""

    def __init__(self, lora_enc: CLIPEncoder, head: Projection) -> None:
        super().__init__()
        self.model, self.head, self.encoder = lora_enc.model, head, lora_enc  # encoder: not a module, its model is

    def forward(self, pixels: torch.Tensor, autocast) -> torch.Tensor:
        with autocast:
            feats = self.encoder.image_features(pixels)
        return self.head(F.normalize(feats.float(), dim=-1))


def _image_path(new, stage1_head, data, cfg, dev, pixels, new_img, new_txt, train, val, texts_new, bank_ids,
                val_gallery, val_weights, temperature, checkpoint_dir, on_epoch_end, verbose):
    """LoRA on the image tower + an image head; returns ``(lora or None, head, record, the kept path's held-out ranks or None)``."""
    n_val = len(val)
    lora_enc = add_lora(new, cfg).to(dev)
    head = copy.deepcopy(stage1_head).to(dev).train().requires_grad_(True)
    frozen = copy.deepcopy(stage1_head).to(dev)
    with torch.no_grad():
        extra_new = texts_new[bank_ids] if texts_new is not None else new_txt[:0]
        if cfg.caption_bank == "old" and data.old_captions is not None and (texts_new is None or data.texts_old is not None):
            extra_old = data.texts_old[bank_ids] if texts_new is not None else extra_new.new_zeros(0, stage1_head.d_old)
            bank = torch.cat([data.old_captions[train], extra_old]).to(dev)
            bank_kind = "old"
        else:
            bank = torch.cat([frozen.in_chunks(new_txt[train]), frozen.in_chunks(extra_new)]).to(dev)
            bank_kind = "stage1"
        keep = frozen.in_chunks(new_img).to(dev)
        if cfg.confidence_weighting:
            weights = pair_confidence(new_img[train], torch.cat([new_txt[train], extra_new]), temperature)
            weights = (weights / weights.mean()).to(dev)
        else:
            weights = torch.ones(len(train), device=dev)

    rank, n_proc = world()
    if cfg.batch_size < n_proc:
        raise XBTError(f"stage 2 splits each batch across the {n_proc} processes: batch_size must be >= {n_proc}, got {cfg.batch_size}")
    path = _ImagePath(lora_enc, head)
    # several processes: each takes its share of every batch and DDP averages the gradients, so all hold the same weights
    trained = DistributedDataParallel(path, device_ids=[dev.index] if dev.type == "cuda" else None) if n_proc > 1 else path
    lora_params = [p for p in lora_enc.peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": lora_params, "lr": cfg.lr}, {"params": list(head.parameters()), "lr": cfg.projection_lr}],
                            weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    autocast, precision = _autocast(dev, cfg.precision)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")  # fp16 gradients underflow unscaled
    gen = torch.Generator().manual_seed(cfg.seed + 1)

    def encode(idx: torch.Tensor, module: nn.Module = path) -> torch.Tensor:
        return module(pixels[idx].to(dev), autocast)

    @torch.no_grad()
    def val_ranks() -> torch.Tensor | None:  # the held-out images' ranks under the path as it stands: float64 [n_val]
        if n_val == 0:
            return None
        head.eval()
        lora_enc.model.eval()  # LoRA's dropout off too
        z = torch.cat([encode(val[s : s + 256]) for s in range(0, n_val, 256)])
        head.train()
        frozen_train_mode(lora_enc)
        return i2t_ranks(z, val_gallery.to(dev)).cpu()

    def score() -> float | None:
        ranks = val_ranks()
        return None if ranks is None else geometric_mean_rank(ranks, val_weights)

    choice = PathChoice("image", I2T_MEASURE)
    history: dict = {"train_loss": [], "val_geo_mean_rank": [], "precision": precision, "caption_bank": len(bank),
                     "caption_bank_kind": bank_kind}
    first = score()
    history["val_geo_mean_rank"].append(first)
    if first is not None:
        choice.add("stage 1", first)
    best = {"loss": first, "epoch": 0, "bad_epochs": 0, "state": trainable_state(lora_enc, head)}
    start_epoch, folder = 1, Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None:
        key = run_key(cfg, new.fingerprint, pixels, data.captions, {"images": data.old_images, "captions": data.old_captions}, data.texts)
        folder.mkdir(parents=True, exist_ok=True)
        saved = load_checkpoint(folder, key)
        if saved is not None:
            tensors, meta = saved
            load_trainable_state(lora_enc, head, tensors)
            restore_optimizer(opt, tensors, meta["optimizer"])
            sched.load_state_dict(meta["scheduler"])
            gen.set_state(tensors["rng.generator"])
            torch.set_rng_state(tensors["rng.torch"])
            best = {"loss": meta["best_loss"], "epoch": meta["best_epoch"], "bad_epochs": meta["bad_epochs"],
                    "state": {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}}
            history, start_epoch = meta["history"], meta["epoch"] + 1
            history["resumed_from_epoch"] = meta["epoch"]
            for e, v in enumerate(history["val_geo_mean_rank"]):
                if v is not None and e > 0:
                    choice.add(f"stage 2 (epoch {e})", v)

    frozen_train_mode(lora_enc)
    stopped = best["bad_epochs"] >= cfg.patience
    bar = tqdm(range(start_epoch, cfg.epochs + 1), desc="stage 2 (image path)", disable=not verbose, leave=False)
    for epoch in bar:
        if stopped:
            break
        order = torch.randperm(len(train), generator=gen)
        losses = []
        for b in range(max(1, len(order) // cfg.batch_size)):  # full batches only, at least one
            rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size][rank::n_proc]
            idx = train[rows]
            z = encode(idx, trained)
            loss = cfg.caption_rank_weight * caption_ranking(z, bank, rows.to(dev), cfg.temperature, weights[rows.to(dev)])
            if cfg.image_keep_weight:
                loss = loss + cfg.image_keep_weight * cosine_gap(z, keep[idx.to(dev)])
            if not torch.isfinite(loss):  # diverged: this path stops, the guard keeps its best earlier state
                history["diverged_at_epoch"] = epoch
                break
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(mean_across(loss))  # every process records the whole batch's loss
        if "diverged_at_epoch" in history:
            break
        history["train_loss"].append(sum(losses) / len(losses))
        val_score = score()
        history["val_geo_mean_rank"].append(val_score)
        if val_score is None or not cfg.guard:
            best = {"loss": val_score, "epoch": epoch, "bad_epochs": 0, "state": trainable_state(lora_enc, head)}
        elif choice.add(f"stage 2 (epoch {epoch})", val_score):
            best = {"loss": val_score, "epoch": epoch, "bad_epochs": 0, "state": trainable_state(lora_enc, head)}
        else:
            best["bad_epochs"] += 1
            stopped = best["bad_epochs"] >= cfg.patience
        bar.set_postfix(loss=f"{history['train_loss'][-1]:.3f}", val="-" if val_score is None else f"{val_score:.3f}")
        if folder is not None and rank == 0:
            save_checkpoint(folder, epoch, key, lora_enc, head, best, opt, sched, gen, history)
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)

    load_trainable_state(lora_enc, head, best["state"])
    kept_ranks = val_ranks()  # the kept path's held-out ranks, for the comparison with the old model
    history["kept_epoch"] = best["epoch"]
    if not cfg.guard and first is not None:
        choice.scores.update({f"stage 2 (epoch {e})": v for e, v in enumerate(history["val_geo_mean_rank"]) if e and v is not None})
        choice.chosen = f"stage 2 (epoch {best['epoch']})" if best["epoch"] else "stage 1"
    record = {"choice": choice.to_dict() if first is not None else None, "history": history}
    if best["epoch"] == 0:  # stage 1 kept: no LoRA, the stage-1 head
        return None, stage1_head, record, kept_ranks
    lora_enc.model.eval()
    lora_enc.refresh_fingerprint()
    return lora_enc, head.eval().requires_grad_(False).cpu(), record, kept_ranks
