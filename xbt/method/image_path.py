"""Stage 2's image path: PEFT LoRA on the NEW image tower and an image head, trained to rank each pair's caption first.

Each pair image ranks its own caption first among a frozen caption bank (the training pair
captions plus stage-1 texts, at their stage-1 places or at the OLD caption vectors), each pair
weighted by the frozen new model's confidence in it (``xbt.method.losses.pair_confidence``), with a
keep term holding projected images near their stage-1 place. After every epoch the held-out images
search the OLD vectors of the held-out captions among distractors; the guard keeps the best state,
stage 1 included (``xbt.method.guard.PathChoice``). With a checkpoint folder every epoch is saved
(``xbt.method.checkpoint``) and a matching run resumes where it stopped.

``train_image_path`` reads top to bottom: set up (``ImagePathTrainer.__init__``), score stage 1
and resume (``start``), one ``epoch`` at a time, then ``finish``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..core.distributed import mean_across, world
from ..core.errors import XBTError
from ..models.encoders import CLIPEncoder
from ..models.head import Projection
from ..models.lora import add_lora, frozen_train_mode
from .checkpoint import (
    load_checkpoint,
    load_trainable_state,
    restore_optimizer,
    run_key,
    save_checkpoint,
    trainable_state,
)
from .config import Stage2Config
from .guard import PathChoice, geometric_mean_rank, i2t_ranks
from .losses import caption_ranking, cosine_gap, pair_confidence

I2T_MEASURE = (
    "I2T: held-out pair images search the OLD vectors of the held-out pair captions among distractor "
    "captions; geometric-mean rank weighted by the new model's confidence in each pair"
)


def autocast_for(device: torch.device, precision: str):
    """``(autocast context, precision)`` for ``precision`` ``"auto"`` (bf16 on CUDA, else fp32), fp32, bf16 or fp16."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext(), precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype), precision


@dataclass
class ImagePathInputs:
    """What the image path trains and is judged on, prepared by stage 2.

    Attributes:
        pixels: the preprocessed pair images, float32 [n, 3, H, W] on the CPU.
        new_img, new_txt: the bare new model's vectors of the pair images / captions [n, d_new].
        train, val: indices of the training and held-out pairs (int64).
        texts_new: the stage-1 texts' NEW vectors [m, d_new], or ``None``; ``bank_ids`` the rows of
            them in the caption bank.
        val_gallery: the held-out search's gallery, OLD vectors of the held-out captions then the
            distractors [len(val) + k, d_old]; ``val_weights`` each held-out pair's confidence.
        temperature: the new model's confidence temperature (``pair_confidence``).
    """

    pixels: torch.Tensor
    new_img: torch.Tensor
    new_txt: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor
    texts_new: torch.Tensor | None
    bank_ids: torch.Tensor
    val_gallery: torch.Tensor
    val_weights: torch.Tensor | None
    temperature: float


class _ImagePath(nn.Module):
    """The image path as one module (what ``DistributedDataParallel`` wraps): LoRA image tower, then the head."""

    def __init__(self, lora_enc: CLIPEncoder, head: Projection) -> None:
        super().__init__()
        self.model, self.head, self.encoder = lora_enc.model, head, lora_enc  # encoder: not a module, its model is

    def forward(self, pixels: torch.Tensor, autocast) -> torch.Tensor:
        with autocast:
            feats = self.encoder.image_features(pixels)
        return self.head(F.normalize(feats.float(), dim=-1))


class ImagePathTrainer:
    """One image-path run: its modules, caption bank, optimiser and guard, advanced an epoch at a time."""

    def __init__(
        self,
        new: CLIPEncoder,
        stage1_head: Projection,
        data,
        cfg: Stage2Config,
        dev: torch.device,
        inputs: ImagePathInputs,
    ) -> None:
        self.new, self.stage1_head, self.data, self.cfg, self.dev, self.x = new, stage1_head, data, cfg, dev, inputs
        train = inputs.train
        self.lora_enc = add_lora(new, cfg.rank, cfg.alpha, cfg.dropout, cfg.target_modules).to(dev)
        self.head = copy.deepcopy(stage1_head).to(dev).train().requires_grad_(True)
        frozen = copy.deepcopy(stage1_head).to(dev)
        with torch.no_grad():
            extra_new = inputs.texts_new[inputs.bank_ids] if inputs.texts_new is not None else inputs.new_txt[:0]
            texts_old_known = inputs.texts_new is None or data.texts_old is not None
            if cfg.caption_bank == "old" and data.old_captions is not None and texts_old_known:
                extra_old = (
                    data.texts_old[inputs.bank_ids]
                    if inputs.texts_new is not None
                    else extra_new.new_zeros(0, stage1_head.d_old)
                )
                self.bank = torch.cat([data.old_captions[train], extra_old]).to(dev)
                self.bank_kind = "old"
            else:
                self.bank = torch.cat([frozen.in_chunks(inputs.new_txt[train]), frozen.in_chunks(extra_new)]).to(dev)
                self.bank_kind = "stage1"
            self.keep = frozen.in_chunks(inputs.new_img).to(dev)
            if cfg.confidence_weighting:
                weights = pair_confidence(
                    inputs.new_img[train], torch.cat([inputs.new_txt[train], extra_new]), inputs.temperature
                )
                self.weights = (weights / weights.mean()).to(dev)
            else:
                self.weights = torch.ones(len(train), device=dev)

        self.rank, self.n_proc = world()
        if cfg.batch_size < self.n_proc:
            raise XBTError(
                f"stage 2 splits each batch across the {self.n_proc} processes: batch_size must be >= "
                f"{self.n_proc}, got {cfg.batch_size}"
            )
        self.path = _ImagePath(self.lora_enc, self.head)
        # several processes: each takes its share of every batch and DDP averages the gradients, so all hold the
        # same weights
        self.trained = (
            DistributedDataParallel(self.path, device_ids=[dev.index] if dev.type == "cuda" else None)
            if self.n_proc > 1
            else self.path
        )
        lora_params = [p for p in self.lora_enc.peft_model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            [{"params": lora_params, "lr": cfg.lr}, {"params": list(self.head.parameters()), "lr": cfg.projection_lr}],
            weight_decay=cfg.weight_decay,
        )
        steps_per_epoch = max(1, len(train) // cfg.batch_size)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=cfg.epochs * steps_per_epoch)
        self.autocast, precision = autocast_for(dev, cfg.precision)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")  # fp16 gradients underflow unscaled
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.choice = PathChoice("image", I2T_MEASURE)
        self.history: dict = {
            "train_loss": [],
            "val_geo_mean_rank": [],
            "precision": precision,
            "caption_bank": len(self.bank),
            "caption_bank_kind": self.bank_kind,
        }
        self.folder: Path | None = None
        self.stopped = False

    # ------------------------------------------------------------------ scoring
    def encode(self, idx: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        return (module or self.path)(self.x.pixels[idx].to(self.dev), self.autocast)

    @torch.no_grad()
    def val_ranks(self) -> torch.Tensor | None:
        """The held-out images' ranks under the path as it stands: float64 [n_val], or ``None`` without held-out
        pairs."""
        val = self.x.val
        if len(val) == 0:
            return None
        self.head.eval()
        self.lora_enc.model.eval()  # LoRA's dropout off too
        z = torch.cat([self.encode(val[s : s + 256]) for s in range(0, len(val), 256)])
        self.head.train()
        frozen_train_mode(self.lora_enc)
        return i2t_ranks(z, self.x.val_gallery.to(self.dev)).cpu()

    def score(self) -> float | None:
        ranks = self.val_ranks()
        return None if ranks is None else geometric_mean_rank(ranks, self.x.val_weights)

    def _best(self, loss: float | None, epoch: int) -> dict:
        return {"loss": loss, "epoch": epoch, "bad_epochs": 0, "state": trainable_state(self.lora_enc, self.head)}

    # ------------------------------------------------------------------ the run
    def start(self, checkpoint_dir: str | os.PathLike | None) -> int:
        """Score stage 1 (the guard's first candidate) and resume a matching checkpoint; returns the first epoch to
        run."""
        self.first = self.score()
        self.history["val_geo_mean_rank"].append(self.first)
        if self.first is not None:
            self.choice.add("stage 1", self.first)
        self.best = self._best(self.first, 0)
        start_epoch = 1
        if checkpoint_dir is not None:
            start_epoch = self._resume(Path(checkpoint_dir))
        frozen_train_mode(self.lora_enc)
        self.stopped = self.best["bad_epochs"] >= self.cfg.patience
        return start_epoch

    def _resume(self, folder: Path) -> int:
        data = self.data
        olds = {"images": data.old_images, "captions": data.old_captions}
        self.key = run_key(self.cfg, self.new.fingerprint, self.x.pixels, data.captions, olds, data.texts)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        saved = load_checkpoint(folder, self.key)
        if saved is None:
            return 1
        tensors, meta = saved
        load_trainable_state(self.lora_enc, self.head, tensors)
        restore_optimizer(self.opt, tensors, meta["optimizer"])
        self.sched.load_state_dict(meta["scheduler"])
        self.gen.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        self.best = {
            "loss": meta["best_loss"],
            "epoch": meta["best_epoch"],
            "bad_epochs": meta["bad_epochs"],
            "state": {k[5:]: v for k, v in tensors.items() if k.startswith("best.")},
        }
        self.history = meta["history"]
        self.history["resumed_from_epoch"] = meta["epoch"]
        for e, v in enumerate(self.history["val_geo_mean_rank"]):
            if v is not None and e > 0:
                self.choice.add(f"stage 2 (epoch {e})", v)
        return meta["epoch"] + 1

    def epoch(self, epoch: int) -> bool:
        """Train one epoch, score it and let the guard decide; ``False`` when the loss diverged (the path stops)."""
        cfg, train, history = self.cfg, self.x.train, self.history
        order = torch.randperm(len(train), generator=self.gen)
        losses = []
        for b in range(max(1, len(order) // cfg.batch_size)):  # full batches only, at least one
            rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size][self.rank :: self.n_proc]
            idx = train[rows]
            z = self.encode(idx, self.trained)
            loss = cfg.caption_rank_weight * caption_ranking(
                z, self.bank, rows.to(self.dev), cfg.temperature, self.weights[rows.to(self.dev)]
            )
            if cfg.image_keep_weight:
                loss = loss + cfg.image_keep_weight * cosine_gap(z, self.keep[idx.to(self.dev)])
            if not torch.isfinite(loss):  # diverged: this path stops, the guard keeps its best earlier state
                history["diverged_at_epoch"] = epoch
                return False
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            losses.append(mean_across(loss))  # every process records the whole batch's loss
        history["train_loss"].append(sum(losses) / len(losses))
        val_score = self.score()
        history["val_geo_mean_rank"].append(val_score)
        if val_score is None or not cfg.guard or self.choice.add(f"stage 2 (epoch {epoch})", val_score):
            self.best = self._best(val_score, epoch)
        else:
            self.best["bad_epochs"] += 1
            self.stopped = self.best["bad_epochs"] >= cfg.patience
        if self.folder is not None and self.rank == 0:
            save_checkpoint(
                self.folder,
                epoch,
                self.key,
                self.lora_enc,
                self.head,
                self.best,
                self.opt,
                self.sched,
                self.gen,
                history,
            )
        return True

    def finish(self) -> tuple[CLIPEncoder | None, Projection, dict, torch.Tensor | None]:
        """Load the kept state; ``(LoRA encoder or None, head, record, the kept path's held-out ranks or None)``."""
        history, best = self.history, self.best
        load_trainable_state(self.lora_enc, self.head, best["state"])
        kept_ranks = self.val_ranks()  # the kept path's held-out ranks, for the comparison with the old model
        history["kept_epoch"] = best["epoch"]
        if not self.cfg.guard and self.first is not None:
            self.choice.scores.update(
                {f"stage 2 (epoch {e})": v for e, v in enumerate(history["val_geo_mean_rank"]) if e and v is not None}
            )
            self.choice.chosen = f"stage 2 (epoch {best['epoch']})" if best["epoch"] else "stage 1"
        record = {"choice": self.choice.to_dict() if self.first is not None else None, "history": history}
        if best["epoch"] == 0:  # stage 1 kept: no LoRA, the stage-1 head
            return None, self.stage1_head, record, kept_ranks
        self.lora_enc.model.eval()
        self.lora_enc.refresh_fingerprint()
        return self.lora_enc, self.head.eval().requires_grad_(False).cpu(), record, kept_ranks


def train_image_path(
    new: CLIPEncoder,
    stage1_head: Projection,
    data,
    cfg: Stage2Config,
    dev: torch.device,
    inputs: ImagePathInputs,
    checkpoint_dir: str | os.PathLike | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    verbose: bool = True,
) -> tuple[CLIPEncoder | None, Projection, dict, torch.Tensor | None]:
    """LoRA on the image tower + an image head;
    ``(lora or None, head, record, the kept path's held-out ranks or None)``."""
    run = ImagePathTrainer(new, stage1_head, data, cfg, dev, inputs)
    start_epoch = run.start(checkpoint_dir)
    bar = tqdm(range(start_epoch, cfg.epochs + 1), desc="stage 2 (image path)", disable=not verbose, leave=False)
    for epoch in bar:
        if run.stopped or not run.epoch(epoch):
            break
        val = run.history["val_geo_mean_rank"][-1]
        bar.set_postfix(loss=f"{run.history['train_loss'][-1]:.3f}", val="-" if val is None else f"{val:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, run.history)
    return run.finish()
