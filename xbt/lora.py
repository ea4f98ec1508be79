"""XBT stage 2: PEFT LoRA on the NEW model's encoders, trained with the projection on image-text pairs.

Stage 1 taught the projection where new *text* embeddings belong in the old space. Stage 2 moves
new *image* embeddings (and refines text ones) there, using a small set of image-caption pairs and
without calling the old model:

- the new model is deep-copied and PEFT LoRA adapters are injected into the copy (the user's model
  object and its base weights are never touched, so new->new stays available);
- loss = ``caption_rank_weight`` x cross-entropy ranking each image's own caption among the
  stage-1 locations of a caption bank - all pair captions plus up to ``caption_bank_size`` stage-1
  texts, frozen, standing in for the old caption gallery: the image->text search itself. Each pair
  is weighted by the frozen NEW model's own confidence in it (``pair_confidence``: the
  probability, at the new model's own temperature, of the pair's caption among the bank).
  Captions differ in how much they say: "one shape: a star" fits many images, and ranking it
  first for its one image pulls image queries towards vague captions; unweighted, this lowered
  image->text recall below stage 1 on the toy world (so did every unweighted image-side target we
  tried, true old-caption vectors included). Weighted, the captions that single their image out
  teach the most;
  + ``pair_weight`` x symmetric InfoNCE between projected new image and projected new text of each
  pair (DESIGN.md's starting point: alone beside the text anchor it lowered image->text recall by
  12 points; beside the weighted ranking it costs nothing there and lifts text->image);
  + ``anchor_weight`` x (1 - cos) between projected text and its *stage-1* value (the frozen
  stage-1 projection of the frozen new text embedding: the old model's stand-in), which keeps the
  text side where old captions are;
  + ``image_keep_weight`` x (1 - cos) between projected image and its stage-1 value, which keeps
  what stage 1 already got right while LoRA corrects the rest;
  + when the user has their OLD gallery vectors for the pair images (``old_image_embeddings``),
  ``old_image_weight`` x InfoNCE(projected text, old image): the direct text->image signal
  (``old_image_cos_weight`` adds 1 - cos(projected image, old image), off by default: old image
  vectors are not where old captions are, and image queries search captions).
  Each choice was measured across seeds with ``scripts/sweep_stage2.py`` (BENCHMARKS.md).
- a held-out split of the pairs with early stopping; checkpoints (safetensors + JSON) after every
  epoch in ``checkpoint_dir`` so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from tqdm.auto import tqdm

from .embed import embed_images, embed_texts, save_tensor_atomic
from .encoders import CLIPEncoder, best_device
from .errors import XBTError
from .projection import Projection, checked_config


@dataclass
class Stage2Config:
    """Stage-2 hyperparameters (defaults tuned on the toy world; see BENCHMARKS.md)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    towers: tuple[str, ...] = ("image", "text")  # which encoders get LoRA
    target_modules: tuple[str, ...] | None = None  # None: the backend's default (see CLIPEncoder)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4  # LoRA weights
    projection_lr: float = 1e-4  # gentler: the projection already holds stage 1's knowledge
    weight_decay: float = 0.0
    temperature: float = 0.05
    pair_weight: float = 1.0  # InfoNCE between projected new image and projected new text
    caption_rank_weight: float = 1.0  # image -> its caption among the stage-1 locations of the caption bank
    caption_bank_size: int = 20_000  # stage-1 captions that join the pair captions in that bank (0: pairs only)
    confidence_weighting: bool = True  # weight that ranking by the NEW model's own confidence in the pair
    confidence_temperature: float | None = None  # None: the new model's own 1 / logit_scale
    anchor_weight: float = 1.0  # projected text stays at its stage-1 value
    image_keep_weight: float = 1.0  # projected image stays near its stage-1 value (guards what stage 1 got right)
    old_image_weight: float = 1.0  # only with old_image_embeddings: InfoNCE(projected text, old image)
    old_image_cos_weight: float = 0.0  # only with old_image_embeddings: 1 - cos(projected image, old image)
    val_fraction: float = 0.1
    patience: int = 3
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32", "bf16", "fp16"
    seed: int = 0

    @classmethod
    def from_kwargs(cls, **kwargs) -> Stage2Config:
        """Build from keyword arguments, rejecting unknown names with the list of valid ones."""
        cfg = checked_config(cls, "stage-2", kwargs)
        bad_towers = set(cfg.towers) - {"image", "text"}
        if bad_towers or not cfg.towers:
            raise XBTError(f"towers must be a non-empty subset of ('image', 'text'), got {cfg.towers}")
        if cfg.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise XBTError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {cfg.precision!r}")
        if cfg.caption_bank_size < 0:
            raise XBTError(f"caption_bank_size must be >= 0 (0 ranks among the pair captions only), got {cfg.caption_bank_size}")
        if cfg.confidence_temperature is not None and not cfg.confidence_temperature > 0:
            raise XBTError(
                f"confidence_temperature must be positive (or None for the new model's own 1/logit_scale), got {cfg.confidence_temperature}"
            )
        cfg.towers = tuple(cfg.towers)
        cfg.target_modules = tuple(cfg.target_modules) if cfg.target_modules else None
        return cfg

    def to_dict(self) -> dict:
        """JSON-ready dict of the fields."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# ---------------------------------------------------------------------- LoRA injection


def lora_target_regex(encoder: CLIPEncoder, towers: tuple[str, ...], targets: tuple[str, ...] | None) -> str:
    """A regex (PEFT full-matches module names) selecting the target layers of the chosen towers."""
    suffixes = targets or tuple(encoder.lora_target_modules())
    layer = "(" + "|".join(s.replace(".", r"\.") for s in suffixes) + ")"
    if encoder.backend == "transformers":
        prefix = {"image": r"vision_model\.encoder\.layers\.\d+\.", "text": r"text_model\.encoder\.layers\.\d+\."}
        return "(" + "|".join(prefix[t] for t in towers) + r")(.*\.)?" + layer
    prefix = {"image": r"visual\.transformer\.resblocks\.\d+\.", "text": r"transformer\.resblocks\.\d+\."}
    return "(" + "|".join(prefix[t] for t in towers) + ")" + layer


def add_lora(encoder: CLIPEncoder, cfg: Stage2Config) -> CLIPEncoder:
    """A new ``CLIPEncoder`` over a deep copy of ``encoder.model`` with LoRA layers injected.

    The copy is a ``peft.PeftModel``; only LoRA weights require grad. ``encoder`` is unchanged.
    """
    from peft import LoraConfig, get_peft_model

    regex = lora_target_regex(encoder, cfg.towers, cfg.target_modules)
    lora_cfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=regex)
    model = copy.deepcopy(encoder.model)
    try:
        peft_model = get_peft_model(model, lora_cfg)
    except ValueError as exc:
        raise XBTError(f"no LoRA target layers matched in {encoder.name} ({exc}); pass target_modules=... naming its layers") from exc
    return wrap_peft(encoder, peft_model)


def wrap_peft(encoder: CLIPEncoder, peft_model: torch.nn.Module) -> CLIPEncoder:
    """A ``CLIPEncoder`` that runs ``peft_model`` with ``encoder``'s tokenizer and preprocessing."""
    inner = peft_model.base_model.model if hasattr(peft_model, "base_model") else peft_model
    wrapped = CLIPEncoder(inner, encoder.tokenizer, encoder.preprocess, f"{encoder.name}+lora", encoder.backend)
    wrapped.peft_model = peft_model  # kept for saving, merging and disabling the adapters
    return wrapped


# ---------------------------------------------------------------------- data


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
def pair_confidence(image_emb: torch.Tensor, text_emb: torch.Tensor, temperature: float, chunk: int = 4096) -> torch.Tensor:
    """For each pair ``i``: the probability a model gives caption ``i`` among all rows of ``text_emb`` for image ``i``.

    ``softmax(image_emb[i] @ text_emb.T / temperature)[i]``: ``text_emb`` holds the pair captions
    first (row ``i`` is image ``i``'s caption), then any further bank captions. Computed in chunks of
    rows so that a large pair set never builds the full score matrix. Inputs are unit rows of the
    same model.
    A vague caption ("one shape: a star") matches many images and gets a low value; a caption
    that singles its image out gets a high one.
    """
    out = []
    for start in range(0, len(image_emb), chunk):
        logits = image_emb[start : start + chunk] @ text_emb.T / temperature
        rows = torch.arange(len(logits), device=logits.device)
        out.append((logits[rows, rows + start] - torch.logsumexp(logits, dim=-1)).exp())
    return torch.cat(out)


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


# ---------------------------------------------------------------------- checkpoints


def _config_key(cfg: Stage2Config, n_pairs: int, has_old: bool, bank: int) -> str:
    blob = json.dumps({"cfg": cfg.to_dict(), "n": n_pairs, "old": has_old, "bank": bank}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _trainable_state(lora_enc: CLIPEncoder, projection: Projection) -> dict[str, torch.Tensor]:
    state = {f"lora.{k}": v.detach().cpu().clone() for k, v in lora_enc.peft_model.named_parameters() if v.requires_grad}
    state.update({f"projection.{k}": v.detach().cpu().clone() for k, v in projection.state_dict().items()})
    return state


def _load_trainable_state(lora_enc: CLIPEncoder, projection: Projection, state: dict[str, torch.Tensor]) -> None:
    params = dict(lora_enc.peft_model.named_parameters())
    with torch.no_grad():
        for key, value in state.items():
            if key.startswith("lora."):
                params[key[5:]].copy_(value)
    projection.load_state_dict({k[11:]: v for k, v in state.items() if k.startswith("projection.")})


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (safetensors) and the rest (JSON): no pickle."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().clone()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for key, v in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: Path, epoch: int, key: str, lora_enc, projection, best, opt, sched, gen, history) -> None:
    """Write the training state after ``epoch`` (tensors as safetensors, the rest as JSON), atomically."""
    opt_tensors, opt_meta = _optimizer_tensors(opt)
    tensors = {**_trainable_state(lora_enc, projection), **opt_tensors, "rng.generator": gen.get_state(), "rng.torch": torch.get_rng_state()}
    tensors.update({f"best.{k}": v for k, v in best["state"].items()})
    meta = {"epoch": epoch, "key": key, "optimizer": opt_meta, "scheduler": sched.state_dict(),
            "best_loss": best["loss"], "best_epoch": best["epoch"], "bad_epochs": best["bad_epochs"], "history": history}
    save_tensor_atomic(folder / "stage2_checkpoint.safetensors", tensors)
    tmp = folder / ".stage2_checkpoint.json.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, folder / "stage2_checkpoint.json")


def load_checkpoint(folder: Path, key: str) -> tuple[dict, dict] | None:
    """The saved (tensors, meta) if ``folder`` holds a checkpoint of this same run, else None."""
    meta_path, tensor_path = folder / "stage2_checkpoint.json", folder / "stage2_checkpoint.safetensors"
    if not (meta_path.is_file() and tensor_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("key") != key:
        raise XBTError(
            f"{folder} holds a stage-2 checkpoint of a different run (other config or data); "
            "use another checkpoint_dir or delete the old checkpoint to start afresh"
        )
    return load_file(str(tensor_path)), meta


# ---------------------------------------------------------------------- training


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
        (LoRA encoder, trained projection, history) - best validation epoch restored.
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
    dev = best_device(device)
    torch.manual_seed(cfg.seed)
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

    def nce(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        logits = a @ b.T / cfg.temperature
        labels = torch.arange(len(a), device=dev)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

    def cos_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 1 - (a * b).sum(-1).mean()

    def loss_of(idx: torch.Tensor, z_img: torch.Tensor, z_txt: torch.Tensor) -> torch.Tensor:
        idx = idx.to(dev)
        loss = cfg.anchor_weight * cos_gap(z_txt, anchors[idx])
        if cfg.caption_rank_weight:
            # Image->text search against the stage-1 locations of the caption bank (frozen: the old
            # caption gallery's stand-in), each pair weighted by the new model's own confidence.
            ranking = F.cross_entropy(z_img @ bank.T / cfg.temperature, idx, reduction="none")
            loss = loss + cfg.caption_rank_weight * (rank_weights[idx] * ranking).mean()
        if cfg.pair_weight:
            loss = loss + cfg.pair_weight * nce(z_img, z_txt)
        if cfg.image_keep_weight:
            loss = loss + cfg.image_keep_weight * cos_gap(z_img, image_keep[idx])
        if old_image_embeddings is not None:
            old_img = old_image_embeddings[idx]
            loss = loss + cfg.old_image_weight * nce(z_txt, old_img)
            if cfg.old_image_cos_weight:
                loss = loss + cfg.old_image_cos_weight * cos_gap(z_img, old_img)
        return loss

    @torch.no_grad()
    def validate() -> float:
        if n_val == 0:
            return float("nan")
        lora_enc.model.eval()
        proj.eval()
        z_img, z_txt = forward(val_idx)
        loss = loss_of(val_idx, z_img, z_txt).item()
        lora_enc.model.train()
        proj.train()
        return loss

    history: dict = {"val_loss": [], "train_loss": [], "precision": precision, "n_train": len(train_idx), "n_val": n_val,
                     "caption_bank": len(bank)}
    best = {"loss": validate(), "epoch": 0, "bad_epochs": 0, "state": _trainable_state(lora_enc, proj)}
    history["val_loss"].append(best["loss"])
    start_epoch = 1
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    key = _config_key(cfg, n, old_image_embeddings is not None, len(bank))
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        saved = load_checkpoint(folder, key)
        if saved is not None:
            tensors, meta = saved
            _load_trainable_state(lora_enc, proj, tensors)
            _restore_optimizer(opt, tensors, meta["optimizer"])
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
            best = {"loss": val, "epoch": epoch, "bad_epochs": 0, "state": _trainable_state(lora_enc, proj)}
        else:
            best["bad_epochs"] += 1
            stopped = best["bad_epochs"] >= cfg.patience
        bar.set_postfix(train=f"{history['train_loss'][-1]:.3f}", val=f"{val:.3f}")
        if folder is not None:
            save_checkpoint(folder, epoch, key, lora_enc, proj, best, opt, sched, gen, history)
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)

    _load_trainable_state(lora_enc, proj, best["state"])
    history["best_epoch"] = best["epoch"]
    history["best_val_loss"] = best["loss"]
    lora_enc.model.eval()
    proj.eval().requires_grad_(False)
    lora_enc.refresh_fingerprint()
    return lora_enc, proj.cpu(), history


def lora_parameter_count(encoder: CLIPEncoder) -> int:
    """Number of LoRA parameters in a stage-2 encoder."""
    return sum(p.numel() for n, p in encoder.peft_model.named_parameters() if "lora_" in n)


def merged_copy(encoder: CLIPEncoder) -> CLIPEncoder:
    """A plain encoder with the LoRA weights folded into the base weights (serving path).

    Costs what the bare new model costs per query; outputs match the unmerged encoder to float
    rounding.
    """
    peft_model = copy.deepcopy(encoder.peft_model)
    merged = peft_model.merge_and_unload()
    out = CLIPEncoder(merged, encoder.tokenizer, encoder.preprocess, f"{encoder.name}+merged", encoder.backend)
    out.model.eval()
    return out
