"""The projection head new space -> old space, and XBT stage 1: pretraining it on text alone.

Stage 1 needs no images: both text encoders embed the same captions, and the projection learns to
map new text embeddings onto old ones. Gaussian noise is added to the new embeddings during
training so that the map is smooth around the text manifold and carries over to *image*
embeddings, which sit elsewhere on the sphere (the modality gap) - the trick of XBT and of
text-only training of captioners (CapDec).

Reconstructed choices (the paper does not publish them; each is a field of ``Stage1Config``):
- architecture: ``y = normalize(W x + MLP(x))``; ``W`` starts at the orthogonal Procrustes solution
  on the training texts and the MLP's last layer starts at zero, so training begins exactly at the
  Procrustes map and can only move away from it when the loss says so;
- loss: symmetric InfoNCE between projected noised new text and old text, plus ``cosine_weight``
  times (1 - cosine) to pull each pair together in absolute terms (InfoNCE alone is rank-only);
- noise: ``noise_std`` is the expected *norm* of the noise vector relative to the unit embedding
  (per-dimension std ``noise_std / sqrt(d_new)``), so one value means the same for any width; ``xbt.fit``
  derives it from the NEW model's logit scale when unset (``config.noise_for``);
- held-out validation split with early stopping on the validation loss, best weights kept.

Out of core: the texts arrive as embedding shards (``xbt.shards.PairShards``; in-memory tensors
are wrapped as one), read one at a time. One pass draws the held-out rows (a seeded share of each
shard, at most ``val_max`` in all) and accumulates the Procrustes cross-product of the rest; each
epoch then visits the shards in a seeded order through a shuffle buffer of ``shuffle_buffer``
rows. The validation loss is InfoNCE in blocks of ``val_block`` held-out texts, averaged: an
InfoNCE over the whole split would grow with its size (more negatives), so early stopping would
depend on the corpus size. Memory is the buffer, the held-out rows and one shard: flat in the
corpus size.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..baselines.maps import procrustes_from_cross
from ..core.errors import XBTError
from ..core.seeding import seeded
from ..models.head import Projection
from ..models.shards import PairShards, TensorPairs, iter_shards
from .config import Stage1Config
from .losses import stage1_loss


def add_noise(x: torch.Tensor, noise_std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` plus isotropic Gaussian noise of expected norm ``noise_std`` (per-dim std / sqrt(d))."""
    if noise_std <= 0:
        return x
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + noise * (noise_std / math.sqrt(x.shape[-1]))


def _val_mask(rows: int, shard: int, p: float, take: int, seed: int) -> torch.Tensor:
    """Shard ``shard``'s held-out rows, bool [rows]: each row with probability ``p`` (a seeded draw of its own),
    the first ``take`` kept."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + shard)
    mask = torch.rand(rows, generator=gen) < p
    mask[mask.nonzero().flatten()[take:]] = False
    return mask


@dataclass
class _Split:
    """The held-out rows (in memory, bounded) and how to find them again in each shard."""

    p: float
    take: list[int]
    x_val: torch.Tensor
    y_val: torch.Tensor
    cross: torch.Tensor  # old.T @ new over the training rows, float64 [d_old, d_new]
    n_train: int

    def train_rows(self, i: int, new: torch.Tensor, old: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        keep = ~_val_mask(len(new), i, self.p, self.take[i], seed)
        return new[keep], old[keep]


def _split(shards: PairShards, cfg: Stage1Config) -> _Split:
    """One pass over the shards: draw at most ``val_max`` held-out rows; accumulate the training rows'
    cross-product."""
    n = len(shards)
    n_val = min(int(round(n * cfg.val_fraction)), cfg.val_max) if n >= 20 else 0
    p, room = n_val / n, n_val
    take, xs, ys = [], [], []
    cross = torch.zeros(shards.dims[1], shards.dims[0], dtype=torch.float64)
    for i, (new, old) in enumerate(iter_shards(shards)):
        mask = _val_mask(len(new), i, p, room, cfg.seed)
        take.append(int(mask.sum()))
        room -= take[-1]
        xs.append(new[mask])
        ys.append(old[mask])
        cross += old[~mask].double().T @ new[~mask].double()
    x_val, y_val = torch.cat(xs), torch.cat(ys)
    if len(x_val) == 0:  # too few texts to hold any out: validate on (the start of) the training set
        x_val, y_val = shards.head(max(cfg.val_max, cfg.val_block))
    return _Split(p, take, x_val, y_val, cross, n - sum(take))


def _batches(
    shards: PairShards, split: _Split, cfg: Stage1Config, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of training batches: shards in a seeded order, rows mixed in a buffer of ``shuffle_buffer``.

    Every batch holds ``batch_size`` rows but the epoch's last one; a corpus within the buffer is
    shuffled as a whole.
    """
    bx: list[torch.Tensor] = []
    by: list[torch.Tensor] = []
    size, b = 0, cfg.batch_size
    for i in torch.randperm(len(shards.rows), generator=gen).tolist():
        x, y = split.train_rows(i, *shards.load(i), cfg.seed)
        bx.append(x)
        by.append(y)
        size += len(x)
        if size >= cfg.shuffle_buffer:
            x, y = torch.cat(bx), torch.cat(by)
            perm = torch.randperm(size, generator=gen)
            n_out = (size - cfg.shuffle_buffer // 2) // b * b
            for s in range(0, n_out, b):
                yield x[perm[s : s + b]], y[perm[s : s + b]]
            bx, by, size = [x[perm[n_out:]]], [y[perm[n_out:]]], size - n_out
    if size:
        x, y = torch.cat(bx), torch.cat(by)
        perm = torch.randperm(size, generator=gen)
        for s in range(0, size, b):
            yield x[perm[s : s + b]], y[perm[s : s + b]]


@torch.no_grad()
def _val_loss(proj: Projection, x: torch.Tensor, y: torch.Tensor, cfg: Stage1Config) -> tuple[float, float]:
    """(loss, mean cosine) on the held-out rows: the stage-1 loss averaged over full blocks of ``val_block`` rows.

    A split smaller than one block is one block. The cosine is the mean over all held-out rows.
    """
    proj.eval()
    block = min(cfg.val_block, len(x))
    losses, cos = [], 0.0
    for s in range(0, len(x), block):
        pred = proj(x[s : s + block])
        cos += (pred * y[s : s + block]).sum().item()
        if s + block <= len(x):
            losses.append(stage1_loss(pred, y[s : s + block], cfg.temperature, cfg.cosine_weight).item())
    return sum(losses) / len(losses), cos / len(x)


def train_projection(
    new_text: torch.Tensor | PairShards,
    old_text: torch.Tensor | None = None,
    config: Stage1Config | None = None,
    verbose: bool = True,
) -> tuple[Projection, dict]:
    """XBT stage 1: fit a ``Projection`` so that ``proj(new_text[i]) ~ old_text[i]``.

    Args:
        new_text: new-model text embeddings, float32 [n, d_new], unit rows; or a ``PairShards``
            holding both sides (``xbt.shards.embed_text_shards``), with ``old_text=None``.
        old_text: old-model embeddings of the same texts, float32 [n, d_old], unit rows.
        config: hyperparameters; ``Stage1Config()`` by default.

    Returns:
        The trained projection (best validation epoch, in eval mode) and a history dict with the
        per-epoch validation loss and cosine, the Procrustes starting point's validation cosine,
        and the sizes of the training and held-out sets.

    Randomness comes from ``cfg.seed`` alone; the caller's global RNG is left untouched.
    """
    cfg = config or Stage1Config()
    if cfg.noise_std is None:  # xbt.fit derives it from the NEW model (config.noise_for); here there is no model
        raise XBTError("train_projection needs config.noise_std; xbt.fit derives it from the NEW model (noise_for)")
    if isinstance(new_text, PairShards):
        if old_text is not None:
            raise XBTError("pass either embedding shards alone or new_text and old_text tensors, not both")
        shards = new_text
    else:
        if old_text is None:
            raise XBTError("train_projection needs old_text beside new_text (or one PairShards holding both)")
        shards = TensorPairs(new_text, old_text)
    gen = torch.Generator().manual_seed(cfg.seed)
    split = _split(shards, cfg)
    x_va, y_va = split.x_val, split.y_val

    with seeded(cfg.seed):  # the MLP's initialisation
        proj = Projection(shards.dims[0], shards.dims[1], cfg.hidden)
    with torch.no_grad():
        proj.linear.weight.copy_(procrustes_from_cross(split.cross))
    start_loss, start_cos = _val_loss(proj, x_va, y_va, cfg)
    history = {
        "procrustes_val_cosine": start_cos,
        "val_loss": [start_loss],
        "val_cosine": [start_cos],
        "n_train": split.n_train,
        "n_val": len(x_va),
    }

    opt = torch.optim.AdamW(proj.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(split.n_train / cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    best_loss, best_state, bad_epochs = start_loss, copy.deepcopy(proj.state_dict()), 0
    bar = tqdm(range(cfg.epochs), desc="stage 1 (text-only projection)", disable=not verbose, leave=False)
    for _ in bar:
        proj.train()
        for x, y in _batches(shards, split, cfg, gen):
            if len(x) < 2:
                continue  # InfoNCE needs negatives
            pred = proj(F.normalize(add_noise(x, cfg.noise_std, gen), dim=-1))
            loss = stage1_loss(pred, y, cfg.temperature, cfg.cosine_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        val_loss, val_cos = _val_loss(proj, x_va, y_va, cfg)
        history["val_loss"].append(val_loss)
        history["val_cosine"].append(val_cos)
        bar.set_postfix(val_loss=f"{val_loss:.3f}", val_cos=f"{val_cos:.3f}")
        if val_loss < best_loss - 1e-4:
            best_loss, best_state, bad_epochs = val_loss, copy.deepcopy(proj.state_dict()), 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    proj.load_state_dict(best_state)
    proj.eval()
    history["best_val_loss"] = best_loss
    history["best_val_cosine"] = _val_loss(proj, x_va, y_va, cfg)[1]
    history["epochs_run"] = len(history["val_loss"]) - 1
    return proj, history
