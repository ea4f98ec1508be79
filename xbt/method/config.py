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
            self.lr > 0 and self.temperature > 0,
            f"lr and temperature must be positive, got {self.lr} and {self.temperature}",
        )
        need(0 <= self.val_fraction < 1, f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        need(self.patience >= 1, f"patience must be >= 1, got {self.patience}")


@dataclass
class Stage1Config(TrainingOptions):
    """Stage-1 hyperparameters (defaults tuned on the toy world; see BENCHMARKS.md)."""

    what: ClassVar[str] = "stage-1"

    hidden: int = option(1024, "width of the projection's residual MLP; 0 gives a purely linear projection")
    noise_std: float = option(0.1, "expected norm of the Gaussian noise added to new text embeddings (unit vectors)")
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
        need(self.noise_std >= 0, f"noise_std must be >= 0, got {self.noise_std}")
        need(
            self.val_max >= 0 and self.val_block >= 2,
            f"val_max must be >= 0 and val_block >= 2, got {self.val_max} and {self.val_block}",
        )
        need(
            self.shuffle_buffer >= 2 * self.batch_size,
            f"shuffle_buffer must hold at least two batches ({2 * self.batch_size}), got {self.shuffle_buffer}",
        )


@dataclass
class Stage2Config(TrainingOptions):
    """Stage-2 hyperparameters: the image path (LoRA + head), the text head, and the guard."""

    what: ClassVar[str] = "stage-2"

    # the image path: LoRA on the NEW image tower + an image head, ranking captions
    rank: int = option(8, "LoRA rank")
    alpha: float = option(16.0, "LoRA alpha (scale = alpha / rank)")
    dropout: float = option(0.0, "LoRA dropout")
    target_modules: tuple[str, ...] | None = option(
        None,
        "layer-name suffixes LoRA wraps in the image tower (default: its attention/MLP or bottleneck-convolution "
        "layers)",
    )
    epochs: int = option(5, "image-path training epochs over the pairs")
    batch_size: int = option(64, "pairs per image-path batch")
    lr: float = option(5e-4, "learning rate of the LoRA weights")
    projection_lr: float = option(1e-4, "learning rate of the image head (gentler: it holds stage 1's knowledge)")
    weight_decay: float = option(0.0, "AdamW weight decay of the image path")
    temperature: float = option(0.05, "temperature of the caption ranking")
    caption_rank_weight: float = option(1.0, "each pair image ranks its caption among the caption bank")
    caption_bank_size: int = option(
        20_000, "stage-1 captions that join the training pair captions in that bank (0: pairs only)"
    )
    caption_bank: str = option(
        "stage1",
        "where the bank's captions sit: stage1 (their stage-1 places) or old (the OLD model's caption vectors)",
        choices=("stage1", "old"),
    )
    confidence_weighting: bool = option(True, "weight each pair's ranking by the NEW model's own confidence in it")
    confidence_temperature: float | None = option(
        None, "temperature of that confidence (default: the new model's 1 / logit_scale)"
    )
    image_keep_weight: float = option(1.0, "projected image stays near its stage-1 value")
    # the text path: a head on the frozen NEW text tower, distilled from the new model's own ranking
    text_head: bool = option(
        True, "train a text head by distillation (needs OLD vectors of the pair images); off: text queries use stage 1"
    )
    text_epochs: int = option(3, "text-head epochs over the distillation captions")
    text_lr: float = option(1e-3, "learning rate of the text head")
    text_batch_size: int = option(512, "captions per text-head batch")
    distill_texts: int = option(50_000, "stage-1 captions the text head is distilled on (a seeded sample)")
    distill_temperature: float = option(0.05, "temperature of the student's ranking of OLD image vectors")
    text_anchor_weight: float = option(1.0, "projected text stays near its stage-1 value")
    text_folds: int | None = option(
        None,
        "folds of pairs that choose the text head's epoch, replacing stage 1 only on a gain over one "
        "standard error (None: 5 when under 200 pairs are held out, else 1: the held-out split alone)",
    )
    # the guard
    val_fraction: float = option(0.2, "share of the pairs held out to choose each path's state (none below 20 pairs)")
    guard: bool = option(True, "keep, per path, the held-out-best state, stage 1 included; off: keep the last epoch")
    patience: int = option(3, "image-path epochs without held-out improvement before stopping")
    precision: str = option(
        "auto",
        "auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16 or fp16",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    seed: int = option(0, "seed of the split, batches, bank sample and LoRA initialisation")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.target_modules = tuple(self.target_modules) if self.target_modules else None
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
            self.text_epochs >= 1 and self.text_batch_size >= 2 and self.text_lr > 0,
            f"text_epochs >= 1, text_batch_size >= 2 and text_lr > 0 are needed, got {self.text_epochs}, "
            f"{self.text_batch_size}, {self.text_lr}",
        )
        need(
            self.distill_texts >= 2 and self.distill_temperature > 0,
            f"distill_texts must be >= 2 and distill_temperature > 0, got {self.distill_texts} and "
            f"{self.distill_temperature}",
        )
