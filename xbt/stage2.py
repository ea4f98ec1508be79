"""XBT stage 2: PEFT LoRA on the NEW model's encoders, trained with the projection on image-text pairs.

Stage 1 taught the projection where new *text* embeddings belong in the old space. Stage 2 moves
new *image* embeddings (and refines text ones) there, using a small set of image-caption pairs and
without calling the old model. A LoRA copy of the new model (``xbt.lora.add_lora``: the user's
model is never touched, so new->new stays available) and a copy of the projection are trained on
(``Stage2Config`` weighs each term; ``xbt.losses`` has the math):

- ``caption_rank_weight`` x each pair image ranking its own caption among the stage-1 locations
  of a frozen caption bank (all pair captions plus up to ``caption_bank_size`` stage-1 texts, the
  old caption gallery's stand-in): the image->text search itself. Each pair is weighted by the
  frozen NEW model's own confidence in it (``xbt.losses.pair_confidence``), because captions differ
  in how much they say: ranking a vague caption ("one shape: a star") first for its one image
  pulls image queries towards vague captions, and the captions that single their image out
  should teach the most;
- ``pair_weight`` x symmetric InfoNCE between projected new image and projected new text;
- ``anchor_weight`` x (1 - cos) between projected text and its frozen stage-1 value (the old
  model's stand-in), which keeps the text side where old captions are;
- ``image_keep_weight`` x (1 - cos) between projected image and its stage-1 value, which keeps
  what stage 1 already got right while LoRA corrects the rest;
- given the user's OLD gallery vectors of the pair images (``old_image_embeddings``),
  ``old_image_weight`` x InfoNCE(projected text, old image): the direct text->image signal
  (``old_image_cos_weight`` adds 1 - cos(projected image, old image), off by default: old image
  vectors are not where old captions are, and image queries search captions).

A held-out split of the pairs drives early stopping; with ``checkpoint_dir`` the state is saved
after every epoch (``xbt.checkpoint``) and an interrupted run resumes where it stopped. How each
choice was measured: BENCHMARKS.md (``scripts/sweep_stage2.py``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, load_trainable_state, restore_optimizer, run_key, save_checkpoint, trainable_state
from .config import Stage2Config
from .embed import embed_images, embed_texts
from .encoders import CLIPEncoder, best_device
from .errors import XBTError
from .losses import caption_ranking, cosine_gap, info_nce, pair_confidence
from .lora import add_lora
from .stage1 import Projection, seeded


def _tokens_for(encoder: CLIPEncoder, captions: list[str], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return encoder.tokenize([captions[i] for i in idx.tolist()])


def _autocast(device: torch.device, precision: str):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext(), precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), precision


@torch.no_grad()
def _extra_bank(new: CLIPEncoder, captions: list[str], bank_captions: list[str] | None,
                bank_embeddings: torch.Tensor | None, size: int, gen: torch.Generator, dev: torch.device) -> torch.Tensor:
    """NEW-model embeddings of up to ``size`` bank captions that are not pair captions, on ``dev``.

    A pair caption repeated in the bank would be a false negative for its own image. Which
    captions are kept (when there are more than ``size``) follows ``gen``, i.e. the seed.
    """
    if not bank_captions or size == 0:
        return torch.empty(0, new.embed_dim, device=dev)
    if bank_embeddings is not None and len(bank_embeddings) != len(bank_captions):
        raise XBTError(f"bank_caption_embeddings has {len(bank_embeddings)} rows for {len(bank_captions)} bank_captions; pass one per caption")
    paired = set(captions)
    keep = torch.tensor([i for i, c in enumerate(bank_captions) if c not in paired], dtype=torch.long)
    if len(keep) > size:
        keep = keep[torch.randperm(len(keep), generator=gen)[:size]].sort().values
    if bank_embeddings is None:
        return embed_texts(new, [bank_captions[i] for i in keep.tolist()], device=dev, cache=False, verbose=False).to(dev)
    return F.normalize(bank_embeddings[keep].float(), dim=-1).to(dev)


def train_stage2(
    new: CLIPEncoder,
    projection: Projection,
    images: list[Image.Image],
    captions: list[str],
    config: Stage2Config | None = None,
    old_image_embeddings: torch.Tensor | None = None,
    device: str | torch.device | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    verbose: bool = True,
    bank_captions: list[str] | None = None,
    bank_caption_embeddings: torch.Tensor | None = None,
) -> tuple[CLIPEncoder, Projection, dict]:
    """Train LoRA on a copy of ``new`` and a copy of ``projection`` on image-caption pairs.

    Args:
        new: the NEW model (unchanged; a LoRA copy is trained).
        projection: the stage-1 projection (copied; its frozen original provides the text anchor).
        images, captions: the pairs, ``images[i]`` described by ``captions[i]``.
        old_image_embeddings: optional float32 [n_pairs, d_old] OLD-model embeddings of ``images``.
        checkpoint_dir: if given, a checkpoint is written after each epoch and a matching one is
            resumed from.
        on_epoch_end: called as ``fn(epoch, history)`` after each epoch (and its checkpoint).
        bank_captions: more captions (``xbt.fit`` passes the stage-1 texts): up to
            ``caption_bank_size`` of them, minus the pair captions, join the bank each image ranks
            its caption in, so that a few hundred pairs still meet thousands of negatives.
        bank_caption_embeddings: their NEW-model text embeddings, float32 [len(bank_captions),
            d_new] (computed when omitted).

    Returns:
        (LoRA encoder, trained projection, history) - best validation epoch restored. Without a
        validation split (fewer than 20 pairs, or ``val_fraction=0``) the validation losses are
        ``None`` and the last epoch is kept.

    Randomness comes from ``config.seed`` alone; the caller's global RNG is left untouched.
    """
    cfg = config or Stage2Config()
    n = len(images)
    if n != len(captions):
        raise XBTError(f"stage 2 got {n} images but {len(captions)} captions; pass matched pairs")
    if n < 4:
        raise XBTError(f"stage 2 needs at least 4 image-caption pairs (it contrasts them), got {n}")
    if old_image_embeddings is not None:
        if old_image_embeddings.shape != (n, projection.d_old):
            raise XBTError(
                f"old_image_embeddings must be [{n}, {projection.d_old}] (one OLD-model vector per pair image), "
                f"got {tuple(old_image_embeddings.shape)}"
            )
        old_image_embeddings = F.normalize(old_image_embeddings.float(), dim=-1)
    with seeded(cfg.seed):  # LoRA's initialisation and dropout draw from the global RNG
        return _train(new, projection, images, captions, cfg, old_image_embeddings, best_device(device),
                      checkpoint_dir, on_epoch_end, verbose, bank_captions, bank_caption_embeddings)


def _train(new, projection, images, captions, cfg, old_image_embeddings, dev, checkpoint_dir, on_epoch_end, verbose,
           bank_captions, bank_caption_embeddings) -> tuple[CLIPEncoder, Projection, dict]:
    """The body of ``train_stage2`` (checked arguments), run inside its seeded RNG scope."""
    n = len(images)
    gen = torch.Generator().manual_seed(cfg.seed)
    if old_image_embeddings is not None:
        old_image_embeddings = old_image_embeddings.to(dev)
    new.to(dev)
    lora_enc = add_lora(new, cfg)
    lora_enc.to(dev)
    frozen_proj = copy.deepcopy(projection).to(dev).eval().requires_grad_(False)
    proj = copy.deepcopy(projection).to(dev).train().requires_grad_(True)

    # Inputs are prepared once: pixels; the stage-1 values of every caption (the anchors, also the
    # caption bank) and every image (the keep targets); and how sure the frozen NEW model itself is
    # of each pair (the ranking weights), all from the frozen new model.
    pixels = new.preprocess_images(images).cpu()
    with torch.no_grad():
        new_txt = embed_texts(new, captions, device=dev, cache=False, verbose=False).to(dev)
        new_img = embed_images(new, pixels, device=dev, cache=False, verbose=False).to(dev)
        extra = _extra_bank(new, captions, bank_captions, bank_caption_embeddings, cfg.caption_bank_size, gen, dev)
        bank_new = torch.cat([new_txt, extra])  # the pair captions first: caption i sits at row i
        anchors, image_keep = frozen_proj(new_txt), frozen_proj(new_img)
        bank = torch.cat([anchors, frozen_proj(extra)]) if len(extra) else anchors
        if cfg.confidence_weighting:
            temperature = cfg.confidence_temperature if cfg.confidence_temperature is not None else 1.0 / new.logit_scale
            rank_weights = pair_confidence(new_img, bank_new, temperature)
            rank_weights = rank_weights / rank_weights.mean()
        else:
            rank_weights = torch.ones(n, device=dev)
        del new_txt, new_img, extra, bank_new
    perm = torch.randperm(n, generator=gen)
    n_val = max(2, int(round(n * cfg.val_fraction))) if cfg.val_fraction > 0 and n >= 20 else 0
    val_idx, train_idx = perm[:n_val], perm[n_val:]

    lora_params = [p for p in lora_enc.peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": lora_params, "lr": cfg.lr}, {"params": list(proj.parameters()), "lr": cfg.projection_lr}],
        weight_decay=cfg.weight_decay,
    )
    steps_per_epoch = max(1, len(train_idx) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    autocast, precision = _autocast(dev, cfg.precision)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none (scaler disabled).
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")

    def forward(idx: torch.Tensor):
        with autocast:
            img = lora_enc.image_features(pixels[idx].to(dev))
            txt = lora_enc.text_features(_tokens_for(lora_enc, captions, idx))
        z_img = proj(F.normalize(img.float(), dim=-1))
        z_txt = proj(F.normalize(txt.float(), dim=-1))
        return z_img, z_txt

    def loss_of(idx: torch.Tensor, z_img: torch.Tensor, z_txt: torch.Tensor) -> torch.Tensor:
        idx = idx.to(dev)
        loss = cfg.anchor_weight * cosine_gap(z_txt, anchors[idx])
        if cfg.caption_rank_weight:
            # Image->text search against the stage-1 locations of the caption bank (frozen: the old
            # caption gallery's stand-in), each pair weighted by the new model's own confidence.
            loss = loss + cfg.caption_rank_weight * caption_ranking(z_img, bank, idx, cfg.temperature, rank_weights[idx])
        if cfg.pair_weight:
            loss = loss + cfg.pair_weight * info_nce(z_img, z_txt, cfg.temperature)
        if cfg.image_keep_weight:
            loss = loss + cfg.image_keep_weight * cosine_gap(z_img, image_keep[idx])
        if old_image_embeddings is not None:
            old_img = old_image_embeddings[idx]
            loss = loss + cfg.old_image_weight * info_nce(z_txt, old_img, cfg.temperature)
            if cfg.old_image_cos_weight:
                loss = loss + cfg.old_image_cos_weight * cosine_gap(z_img, old_img)
        return loss

    @torch.no_grad()
    def validate() -> float | None:
        if n_val == 0:
            return None  # nothing held out
        lora_enc.model.eval()
        proj.eval()
        z_img, z_txt = forward(val_idx)
        loss = loss_of(val_idx, z_img, z_txt).item()
        lora_enc.model.train()
        proj.train()
        return loss

    history: dict = {"val_loss": [], "train_loss": [], "precision": precision, "n_train": len(train_idx), "n_val": n_val,
                     "caption_bank": len(bank)}
    best = {"loss": validate(), "epoch": 0, "bad_epochs": 0, "state": trainable_state(lora_enc, proj)}
    history["val_loss"].append(best["loss"])
    start_epoch = 1
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None:
        key = run_key(cfg, new.fingerprint, pixels, captions, old_image_embeddings, bank_captions)
        folder.mkdir(parents=True, exist_ok=True)
        saved = load_checkpoint(folder, key)
        if saved is not None:
            tensors, meta = saved
            load_trainable_state(lora_enc, proj, tensors)
            restore_optimizer(opt, tensors, meta["optimizer"])
            sched.load_state_dict(meta["scheduler"])
            gen.set_state(tensors["rng.generator"])
            torch.set_rng_state(tensors["rng.torch"])
            best = {"loss": meta["best_loss"], "epoch": meta["best_epoch"], "bad_epochs": meta["bad_epochs"],
                    "state": {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}}
            history = meta["history"]
            start_epoch = meta["epoch"] + 1
            history["resumed_from_epoch"] = meta["epoch"]

    lora_enc.model.train()
    proj.train()
    bar = tqdm(range(start_epoch, cfg.epochs + 1), desc="stage 2 (LoRA on pairs)", disable=not verbose, leave=False)
    stopped = best["bad_epochs"] >= cfg.patience
    for epoch in bar:
        if stopped:
            break
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        losses = []
        # Full batches only (a tiny last batch gives a noisy InfoNCE), but at least one batch.
        n_batches = max(1, len(order) // cfg.batch_size)
        for b in range(n_batches):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            z_img, z_txt = forward(idx)
            loss = loss_of(idx, z_img, z_txt)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(loss.item())
        history["train_loss"].append(sum(losses) / max(1, len(losses)))
        val = validate()
        history["val_loss"].append(val)
        if n_val == 0 or val < best["loss"] - 1e-4:
            best = {"loss": val, "epoch": epoch, "bad_epochs": 0, "state": trainable_state(lora_enc, proj)}
        else:
            best["bad_epochs"] += 1
            stopped = best["bad_epochs"] >= cfg.patience
        bar.set_postfix(train=f"{history['train_loss'][-1]:.3f}", val="-" if val is None else f"{val:.3f}")
        if folder is not None:
            save_checkpoint(folder, epoch, key, lora_enc, proj, best, opt, sched, gen, history)
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)

    load_trainable_state(lora_enc, proj, best["state"])
    history["best_epoch"] = best["epoch"]
    history["best_val_loss"] = best["loss"]
    lora_enc.model.eval()
    proj.eval().requires_grad_(False)
    lora_enc.refresh_fingerprint()
    return lora_enc, proj.cpu(), history
