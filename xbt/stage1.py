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
  (per-dimension std ``noise_std / sqrt(d_new)``), so one value means the same for any width;
- held-out validation split with early stopping on the validation loss, best weights kept.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import Stage1Config
from .errors import XBTError
from .losses import stage1_loss
from .maps import orthogonal_procrustes


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global RNG seeded to ``seed``; the caller's RNG state is restored after.

    For what draws from the global generator and cannot be given its own (module initialisation,
    PEFT's LoRA initialisation, dropout): the same seed gives the same numbers, and the caller's
    random stream (CPU and every CUDA device) is the same before and after.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class Projection(nn.Module):
    """Maps new-model embeddings [n, d_new] to unit vectors in the old space [n, d_old].

    ``y = normalize(linear(x) + mlp(x))``: a linear path (Procrustes-initialised) plus a residual
    MLP whose output layer starts at zero. ``from_linear`` builds the ``hidden=0`` head that holds
    a closed-form map.
    """

    def __init__(self, d_new: int, d_old: int, hidden: int = 1024) -> None:
        super().__init__()
        self.d_new, self.d_old, self.hidden = d_new, d_old, hidden
        self.linear = nn.Linear(d_new, d_old, bias=False)
        if hidden > 0:
            self.mlp = nn.Sequential(nn.Linear(d_new, hidden), nn.GELU(), nn.Linear(hidden, d_old))
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)
        else:
            self.mlp = None

    @classmethod
    def from_linear(cls, weight: torch.Tensor) -> Projection:
        """A purely linear head (``hidden=0``) holding ``weight`` [d_old, d_new], in eval mode.

        Its throwaway initialisation draws from a private seeded stream, not the caller's RNG.
        """
        with seeded(0):
            proj = cls(weight.shape[1], weight.shape[0], hidden=0)
        with torch.no_grad():
            proj.linear.weight.copy_(weight)
        return proj.eval()

    def config(self) -> dict:
        """Constructor arguments, for saving."""
        return {"d_new": self.d_new, "d_old": self.d_old, "hidden": self.hidden}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project and L2-normalise."""
        if x.shape[-1] != self.d_new:
            raise XBTError(f"projection expects {self.d_new}-d new-model embeddings, got {x.shape[-1]}-d")
        y = self.linear(x)
        if self.mlp is not None:
            y = y + self.mlp(x)
        return F.normalize(y, dim=-1)


def add_noise(x: torch.Tensor, noise_std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` plus isotropic Gaussian noise of expected norm ``noise_std`` (per-dim std / sqrt(d))."""
    if noise_std <= 0:
        return x
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + noise * (noise_std / math.sqrt(x.shape[-1]))


def _split(n: int, val_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=generator)
    n_val = int(round(n * val_fraction)) if n >= 20 else 0
    return perm[n_val:], perm[:n_val]


@torch.no_grad()
def _val_loss(proj: Projection, x: torch.Tensor, y: torch.Tensor, cfg: Stage1Config) -> tuple[float, float]:
    proj.eval()
    pred = proj(x)
    loss = stage1_loss(pred, y, cfg.temperature, cfg.cosine_weight).item()
    return loss, (pred * y).sum(-1).mean().item()


def train_projection(
    new_text: torch.Tensor,
    old_text: torch.Tensor,
    config: Stage1Config | None = None,
    verbose: bool = True,
) -> tuple[Projection, dict]:
    """XBT stage 1: fit a ``Projection`` so that ``proj(new_text[i]) ~ old_text[i]``.

    Args:
        new_text: new-model text embeddings, float32 [n, d_new], unit rows.
        old_text: old-model embeddings of the same texts, float32 [n, d_old], unit rows.
        config: hyperparameters; ``Stage1Config()`` by default.

    Returns:
        The trained projection (best validation epoch, in eval mode) and a history dict with the
        per-epoch validation loss and cosine, and the Procrustes starting point's validation cosine.

    Randomness comes from ``cfg.seed`` alone; the caller's global RNG is left untouched.
    """
    cfg = config or Stage1Config()
    if len(new_text) != len(old_text):
        raise XBTError(f"stage 1 needs the same texts under both models: got {len(new_text)} new and {len(old_text)} old embeddings")
    gen = torch.Generator().manual_seed(cfg.seed)
    train_idx, val_idx = _split(len(new_text), cfg.val_fraction, gen)
    if len(val_idx) == 0:
        val_idx = train_idx  # too few texts to hold any out: validate on the training set
    x_tr, y_tr = new_text[train_idx], old_text[train_idx]
    x_va, y_va = new_text[val_idx], old_text[val_idx]

    with seeded(cfg.seed):  # the MLP's initialisation
        proj = Projection(new_text.shape[1], old_text.shape[1], cfg.hidden)
    with torch.no_grad():
        proj.linear.weight.copy_(orthogonal_procrustes(x_tr, y_tr))
    start_loss, start_cos = _val_loss(proj, x_va, y_va, cfg)
    history = {"procrustes_val_cosine": start_cos, "val_loss": [start_loss], "val_cosine": [start_cos]}

    opt = torch.optim.AdamW(proj.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(x_tr) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    best_loss, best_state, bad_epochs = start_loss, copy.deepcopy(proj.state_dict()), 0
    bar = tqdm(range(cfg.epochs), desc="stage 1 (text-only projection)", disable=not verbose, leave=False)
    for _ in bar:
        proj.train()
        order = torch.randperm(len(x_tr), generator=gen)
        for s in range(0, len(order), cfg.batch_size):
            batch = order[s : s + cfg.batch_size]
            if len(batch) < 2:
                continue  # InfoNCE needs negatives
            pred = proj(F.normalize(add_noise(x_tr[batch], cfg.noise_std, gen), dim=-1))
            loss = stage1_loss(pred, y_tr[batch], cfg.temperature, cfg.cosine_weight)
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
