"""The options of XBT's two training stages, as dataclasses validated on construction.

``Stage1Config`` (the text-only projection) and ``Stage2Config`` (LoRA and the heads on pairs)
build with ``from_kwargs`` and serialise with ``to_dict`` (``xbt.core.options``). What an adapter
saves about itself is ``xbt.adapters.config.AdapterConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..core.errors import need
from ..core.options import Options, option


class TrainingOptions(Options):
    """What both training stages share: epochs, batches, learning rate, temperature, early stopping."""

    def __post_init__(self) -> None:
        super().__post_init__()  # the type of each field, before its range
        need(
            self.epochs >= 1 and self.batch_size >= 2,
            f"epochs must be >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}",
        )
        need(
            self.lr > 0 and (self.temperature is None or self.temperature > 0),
            f"lr and temperature must be positive, got {self.lr} and {self.temperature}",
        )
        need(0 <= self.val_fraction < 1, f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        need(self.patience is None or self.patience >= 1, f"patience must be >= 1, got {self.patience}")


@dataclass
class Stage1Config(TrainingOptions):
    """Stage-1 hyperparameters (defaults tuned on the toy world; see BENCHMARKS.md)."""

    what: ClassVar[str] = "stage-1"

    hidden: int = option(1024, "width of the projection's residual MLP; 0 gives a purely linear projection")
    noise_std: float | None = option(
        None,
        "expected norm of the Gaussian noise added to new text embeddings (unit vectors); default: the NEW model's "
        "logit scale x NOISE_PER_LOGIT_SCALE (0.1 at a logit scale of 32, 0.31 at a real CLIP's 100)",
    )
    epochs: int = option(30, "training epochs over the texts")
    batch_size: int = option(512, "texts per InfoNCE batch")
    lr: float = option(1e-3, "AdamW learning rate")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    temperature: float = option(0.05, "InfoNCE temperature")
    cosine_weight: float = option(0.5, "weight of the (1 - cosine) term beside InfoNCE")
    val_fraction: float = option(0.1, "share of the texts held out for early stopping")
    patience: int = option(5, "epochs without validation improvement before stopping")
    seed: int = option(0, "seed of the split, noise, batches and initialisation")
    val_max: int = option(
        10_000, "most texts held out, whatever the corpus size (validation memory and time stay bounded)"
    )
    val_block: int = option(
        1_000,
        "held-out texts per InfoNCE block; the validation loss averages full blocks, so it does not depend on the "
        "split size",
    )
    shuffle_buffer: int = option(
        65_536,
        "texts mixed at a time while streaming over the embedding shards (a corpus this small is fully shuffled)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        need(self.hidden >= 0, f"hidden must be >= 0 (0: linear projection), got {self.hidden}")
        need(self.noise_std is None or self.noise_std >= 0, f"noise_std must be >= 0, got {self.noise_std}")
        need(
            self.val_max >= 0 and self.val_block >= 2,
            f"val_max must be >= 0 and val_block >= 2, got {self.val_max} and {self.val_block}",
        )
        need(
            self.shuffle_buffer >= 2 * self.batch_size,
            f"shuffle_buffer must hold at least two batches ({2 * self.batch_size}), got {self.shuffle_buffer}",
        )


#: the image path's training options where the user leaves them unset (None), per image tower
TOWER_DEFAULTS = {
    "frozen": {"epochs": 40, "batch_size": 256, "lr": 1e-3, "temperature": None},
    "lora": {"epochs": 5, "batch_size": 64, "lr": 5e-4, "patience": 3, "temperature": 0.05},
}
#: options of one image tower only, with their defaults: set away from them for the other tower, they are refused
TOWER_ONLY = {
    "lora": {
        "rank": 8,
        "alpha": 16.0,
        "dropout": 0.0,
        "target_modules": None,
        "projection_lr": 1e-4,
        "weight_decay": 0.0,
        "caption_rank_weight": 1.0,
        "caption_bank_size": 20_000,
        "caption_bank": "stage1",
        "confidence_weighting": True,
        "confidence_temperature": None,
        "image_keep_weight": 1.0,
        "precision": "auto",
        "patience": None,
    },
    "frozen": {
        "image_losses": ("captions", "old_images"),
        "text_prior_weight": 1.0,
        "text_prior_noise": None,
        "pseudo_captions": 20,
    },
}
#: stage 1's noise norm per unit of the NEW model's logit scale (``noise_for``). Text-trained knowledge reaches
#: image queries across the NEW model's modality gap, which widens with its logit scale: a pair's image-caption
#: cosine is 0.74 on the shapes NEW (scale 32) and 0.28 on patterns-wide's (scale 100, as a real CLIP's). Noise
#: 0.1 carries stage 1 over on the first and not on the second, where 0.3 does better (BENCHMARKS.md).
NOISE_PER_LOGIT_SCALE = 1 / 320


def noise_for(new_logit_scale: float) -> float:
    """Stage 1's default noise norm for a NEW model of logit scale ``new_logit_scale`` (CLIP's ``exp(t)``)."""
    return NOISE_PER_LOGIT_SCALE * float(new_logit_scale)


#: the frozen image head's temperature, as a multiple of the spread (standard deviation) of the cosine similarities
#: between OLD caption vectors: the captions its softmax must tell apart (see ``xbt.method.losses.spread_temperature``)
HEAD_TEMPERATURE_FACTOR = 0.06
#: the text head's pair-caption search, the same rule on the OLD image vectors it ranks (0.06 and 0.075 were measured
#: on both compatible worlds x 3 seeds; 0.075 won by the worst case: BENCHMARKS.md)
TEXT_PAIR_TEMPERATURE_FACTOR = 0.075
#: the text head's distillation (the student's ranking of the same OLD image vectors), the same rule: 0.18 gives the
#: 0.05 measured best on shapes (spread 0.276) and 0.023 on patterns-wide (spread 0.125), where 0.02 beat 0.05
DISTILL_TEMPERATURE_FACTOR = 0.18


@dataclass
class Stage2Config(TrainingOptions):
    """Stage-2 hyperparameters: the image path (a head on the frozen image tower, or LoRA + head), the text head,
    and the guard."""

    what: ClassVar[str] = "stage-2"

    image_tower: str = option(
        "frozen",
        "frozen: image queries get a head on the frozen NEW image tower (merges for free); lora: PEFT LoRA on the "
        "tower plus the head, ranking a caption bank",
        choices=("frozen", "lora"),
    )
    # the image path: shared by both towers, defaults per tower (TOWER_DEFAULTS)
    epochs: int | None = option(None, "image-path epochs over the pair images (default: 40 frozen, 5 lora)")
    batch_size: int | None = option(None, "pair images per image-path batch (default: 256 frozen, 64 lora)")
    lr: float | None = option(None, "learning rate of the image head (frozen, 1e-3) or of LoRA (lora, 5e-4)")
    temperature: float | None = option(
        None,
        "temperature of the image path's losses (default: frozen, 0.06 x the spread of OLD caption similarities; "
        "lora, 0.05)",
    )
    patience: int | None = option(
        None,
        "lora: image-path epochs without held-out improvement before stopping (default 3); the frozen head runs its "
        "whole schedule and offers its end state to the guard",
    )
    # the frozen image tower: a head trained on cached features
    image_losses: tuple[str, ...] = option(
        ("captions", "old_images"),
        "the image head's runs, each a guard candidate: captions (each image against the OLD vectors of all its "
        "captions), old_images (each image against its OLD image vector, with stage 1's text loss beside it)",
    )
    text_prior_weight: float = option(1.0, "weight of stage 1's text loss beside the old_images run")
    text_prior_noise: float | None = option(
        None, "noise norm on the stage-1 texts of that text loss (default: the noise stage 1 trained with)"
    )
    pseudo_captions: int = option(
        20,
        "stage-1 captions that join each pair image's own in the captions run where images have fewer than two "
        "captions: the ones the NEW model ranks highest for the image, as OLD vectors (0: the pair captions alone)",
    )
    # the LoRA image tower: PEFT LoRA on the NEW image tower + an image head, ranking captions
    rank: int = option(8, "LoRA rank (lora)")
    alpha: float = option(16.0, "LoRA alpha, scale = alpha / rank (lora)")
    dropout: float = option(0.0, "LoRA dropout (lora)")
    target_modules: tuple[str, ...] | None = option(
        None,
        "layer-name suffixes LoRA wraps in the image tower (lora; default: its attention/MLP or "
        "bottleneck-convolution layers)",
    )
    projection_lr: float = option(1e-4, "learning rate of the image head beside LoRA (lora)")
    weight_decay: float = option(0.0, "AdamW weight decay of the LoRA image path (lora)")
    caption_rank_weight: float = option(1.0, "each pair image ranks its caption among the caption bank (lora)")
    caption_bank_size: int = option(
        20_000, "stage-1 captions that join the training pair captions in that bank (lora; 0: pairs only)"
    )
    caption_bank: str = option(
        "stage1",
        "where the bank's captions sit (lora): stage1 (their stage-1 places) or old (the OLD caption vectors)",
        choices=("stage1", "old"),
    )
    confidence_weighting: bool = option(
        True, "weight each pair's ranking by the NEW model's own confidence in it (lora)"
    )
    confidence_temperature: float | None = option(
        None, "temperature of that confidence (lora; default: the new model's 1 / logit_scale)"
    )
    image_keep_weight: float = option(1.0, "projected image stays near its stage-1 value (lora)")
    # the text path: a head on the frozen NEW text tower, distilled from the new model's own ranking
    text_head: bool = option(
        True, "train a text head by distillation (needs OLD vectors of the pair images); off: text queries use stage 1"
    )
    text_epochs: int = option(3, "text-head epochs over the distillation captions")
    text_lr: float = option(1e-3, "learning rate of the text head")
    text_batch_size: int = option(512, "captions per text-head batch")
    distill_texts: int = option(50_000, "stage-1 captions the text head is distilled on (a seeded sample)")
    distill_temperature: float | None = option(
        None,
        "temperature of the student's ranking of OLD image vectors (None: DISTILL_TEMPERATURE_FACTOR x their cosine "
        "spread)",
    )
    text_anchor_weight: float = option(0.1, "projected text stays near its stage-1 value")
    text_pair_weight: float = option(
        1.0, "weight of the training pair captions finding their own image's OLD vector (0: distillation alone)"
    )
    text_pair_temperature: float | None = option(
        None,
        "temperature of that search (None: TEXT_PAIR_TEMPERATURE_FACTOR x the OLD image vectors' cosine spread)",
    )
    text_folds: int | None = option(
        None,
        "folds of pairs that choose the text head's epoch, replacing stage 1 only on a gain over one "
        "standard error (None: 5 when under 200 pairs are held out, else 1: the held-out split alone)",
    )
    # the guard
    val_fraction: float = option(0.2, "share of the pairs held out to choose each path's state (none below 20 pairs)")
    guard: bool = option(True, "keep, per path, the held-out-best state, stage 1 included; off: keep the last epoch")
    precision: str = option(
        "auto",
        "lora: auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16 or fp16",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    seed: int = option(0, "seed of the split, batches, bank sample and LoRA initialisation")

    def __post_init__(self) -> None:
        self.check_types()  # the type of each field, before defaults fill in and values convert
        need(
            self.image_tower in TOWER_DEFAULTS,
            f"image_tower must be 'frozen' or 'lora', got {self.image_tower!r}",
        )
        for name, default in TOWER_DEFAULTS[self.image_tower].items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        self.image_losses = tuple(self.image_losses)
        self.target_modules = tuple(self.target_modules) if self.target_modules else None
        other = "lora" if self.image_tower == "frozen" else "frozen"
        stray = [k for k, default in TOWER_ONLY[other].items() if getattr(self, k) != default]
        need(
            not stray,
            f"{stray} only apply to image_tower={other!r}, and this stage 2 runs image_tower={self.image_tower!r}: "
            f"drop them, or pass image_tower={other!r}",
        )
        super().__post_init__()
        need(
            self.precision in ("auto", "fp32", "bf16", "fp16"),
            f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {self.precision!r}",
        )
        need(
            self.caption_bank in ("stage1", "old"),
            f"caption_bank must be 'stage1' or 'old', got {self.caption_bank!r}",
        )
        need(
            self.text_folds is None or (isinstance(self.text_folds, int) and self.text_folds >= 1),
            f"text_folds must be an int >= 1 (or None for automatic), got {self.text_folds!r}",
        )
        need(
            not (self.text_folds and self.text_folds > 1 and (not self.guard or self.val_fraction == 0)),
            "text_folds > 1 chooses the text head's epoch on held-out folds: it needs guard=True and val_fraction > 0",
        )
        need(
            self.caption_bank_size >= 0,
            f"caption_bank_size must be >= 0 (0 ranks among the pair captions only), got {self.caption_bank_size}",
        )
        need(
            self.confidence_temperature is None or self.confidence_temperature > 0,
            "confidence_temperature must be positive (or None for the new model's own 1/logit_scale), got "
            f"{self.confidence_temperature}",
        )
        need(self.rank >= 1, f"rank must be >= 1, got {self.rank}")
        need(
            bool(self.image_losses) and set(self.image_losses) <= {"captions", "old_images"},
            f"image_losses must name one or more of 'captions', 'old_images', got {self.image_losses!r}",
        )
        need(
            self.text_prior_weight >= 0 and (self.text_prior_noise is None or self.text_prior_noise >= 0),
            f"text_prior_weight and text_prior_noise must be >= 0, got {self.text_prior_weight} and "
            f"{self.text_prior_noise}",
        )
        need(self.pseudo_captions >= 0, f"pseudo_captions must be >= 0, got {self.pseudo_captions}")
        need(
            self.text_epochs >= 1 and self.text_batch_size >= 2 and self.text_lr > 0,
            f"text_epochs >= 1, text_batch_size >= 2 and text_lr > 0 are needed, got {self.text_epochs}, "
            f"{self.text_batch_size}, {self.text_lr}",
        )
        need(
            self.text_pair_weight >= 0 and (self.text_pair_temperature is None or self.text_pair_temperature > 0),
            f"text_pair_weight must be >= 0 and text_pair_temperature None or > 0, got {self.text_pair_weight} and "
            f"{self.text_pair_temperature}",
        )
        need(
            self.distill_texts >= 2 and (self.distill_temperature is None or self.distill_temperature > 0),
            f"distill_texts must be >= 2 and distill_temperature None or > 0, got {self.distill_texts} and "
            f"{self.distill_temperature}",
        )
