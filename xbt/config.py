"""The options of every method, as dataclasses validated on construction.

- ``Stage1Config`` / ``Stage2Config``: the hyperparameters of XBT's two training stages;
- ``BaselineConfig``: the options of the training-free methods (``BASELINE_OPTIONS`` says which
  apply to which method).

They build with ``from_kwargs`` (unknown names are refused with the list of valid ones) and
serialise with ``to_dict``; the CLI generates its flags from their fields (``metadata["help"]``).
What an adapter saves about itself is ``xbt.adapter_config.AdapterConfig``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from .errors import XBTError, need
from .fusion import ALPHA_GRID, check_alpha
from .maps import DEFAULT_RIDGE


def _opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help text (the CLI's flag help)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults need default_factory")
    return field(default=default, metadata={"help": help, **kw})


class Options:
    """Shared behaviour of the option dataclasses: ``from_kwargs`` and ``to_dict``."""

    #: how error messages name this set of options
    what: ClassVar[str] = "option"

    @classmethod
    def from_kwargs(cls, **kwargs: Any):
        """Build from keyword arguments, rejecting unknown names with the list of valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise XBTError(f"unknown {cls.what} option(s) {unknown}; valid options are {sorted(valid)}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class TrainingOptions(Options):
    """What both training stages share: epochs, batches, learning rate, temperature, early stopping."""

    def __post_init__(self) -> None:
        need(self.epochs >= 1 and self.batch_size >= 2, f"epochs must be >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}")
        need(self.lr > 0 and self.temperature > 0, f"lr and temperature must be positive, got {self.lr} and {self.temperature}")
        need(0 <= self.val_fraction < 1, f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        need(self.patience >= 1, f"patience must be >= 1, got {self.patience}")


@dataclass
class Stage1Config(TrainingOptions):
    """Stage-1 hyperparameters (defaults tuned on the toy world; see BENCHMARKS.md)."""

    what: ClassVar[str] = "stage-1"

    hidden: int = _opt(1024, "width of the projection's residual MLP; 0 gives a purely linear projection")
    noise_std: float = _opt(0.1, "expected norm of the Gaussian noise added to new text embeddings (unit vectors)")
    epochs: int = _opt(30, "training epochs over the texts")
    batch_size: int = _opt(512, "texts per InfoNCE batch")
    lr: float = _opt(1e-3, "AdamW learning rate")
    weight_decay: float = _opt(1e-4, "AdamW weight decay")
    temperature: float = _opt(0.05, "InfoNCE temperature")
    cosine_weight: float = _opt(0.5, "weight of the (1 - cosine) term beside InfoNCE")
    val_fraction: float = _opt(0.1, "share of the texts held out for early stopping")
    patience: int = _opt(5, "epochs without validation improvement before stopping")
    seed: int = _opt(0, "seed of the split, noise, batches and initialisation")
    val_max: int = _opt(10_000, "most texts held out, whatever the corpus size (validation memory and time stay bounded)")
    val_block: int = _opt(1_000, "held-out texts per InfoNCE block; the validation loss averages full blocks, so it does not depend on the split size")
    shuffle_buffer: int = _opt(65_536, "texts mixed at a time while streaming over the embedding shards (a corpus this small is fully shuffled)")

    def __post_init__(self) -> None:
        super().__post_init__()
        need(self.hidden >= 0, f"hidden must be >= 0 (0: linear projection), got {self.hidden}")
        need(self.noise_std >= 0, f"noise_std must be >= 0, got {self.noise_std}")
        need(self.val_max >= 0 and self.val_block >= 2, f"val_max must be >= 0 and val_block >= 2, got {self.val_max} and {self.val_block}")
        need(self.shuffle_buffer >= 2 * self.batch_size, f"shuffle_buffer must hold at least two batches ({2 * self.batch_size}), got {self.shuffle_buffer}")


@dataclass
class Stage2Config(TrainingOptions):
    """Stage-2 hyperparameters: the image path (LoRA + head), the text head, and the guard."""

    what: ClassVar[str] = "stage-2"

    # the image path: LoRA on the NEW image tower + an image head, ranking captions
    rank: int = _opt(8, "LoRA rank")
    alpha: float = _opt(16.0, "LoRA alpha (scale = alpha / rank)")
    dropout: float = _opt(0.0, "LoRA dropout")
    target_modules: tuple[str, ...] | None = _opt(None, "layer-name suffixes LoRA wraps in the image tower (default: its attention/MLP or bottleneck-convolution layers)")
    epochs: int = _opt(5, "image-path training epochs over the pairs")
    batch_size: int = _opt(64, "pairs per image-path batch")
    lr: float = _opt(5e-4, "learning rate of the LoRA weights")
    projection_lr: float = _opt(1e-4, "learning rate of the image head (gentler: it holds stage 1's knowledge)")
    weight_decay: float = _opt(0.0, "AdamW weight decay of the image path")
    temperature: float = _opt(0.05, "temperature of the caption ranking")
    caption_rank_weight: float = _opt(1.0, "each pair image ranks its caption among the caption bank")
    caption_bank_size: int = _opt(20_000, "stage-1 captions that join the training pair captions in that bank (0: pairs only)")
    caption_bank: str = _opt("stage1", "where the bank's captions sit: stage1 (their stage-1 places) or old (the OLD model's caption vectors)",
                             choices=("stage1", "old"))
    confidence_weighting: bool = _opt(True, "weight each pair's ranking by the NEW model's own confidence in it")
    confidence_temperature: float | None = _opt(None, "temperature of that confidence (default: the new model's 1 / logit_scale)")
    image_keep_weight: float = _opt(1.0, "projected image stays near its stage-1 value")
    # the text path: a head on the frozen NEW text tower, distilled from the new model's own ranking
    text_head: bool = _opt(True, "train a text head by distillation (needs OLD vectors of the pair images); off: text queries use stage 1")
    text_epochs: int = _opt(3, "text-head epochs over the distillation captions")
    text_lr: float = _opt(1e-3, "learning rate of the text head")
    text_batch_size: int = _opt(512, "captions per text-head batch")
    distill_texts: int = _opt(50_000, "stage-1 captions the text head is distilled on (a seeded sample)")
    distill_temperature: float = _opt(0.05, "temperature of the student's ranking of OLD image vectors")
    text_anchor_weight: float = _opt(1.0, "projected text stays near its stage-1 value")
    text_folds: int | None = _opt(None, "folds of pairs that choose the text head's epoch, replacing stage 1 only on a gain over one "
                                        "standard error (None: 5 when under 200 pairs are held out, else 1: the held-out split alone)")
    # the guard
    val_fraction: float = _opt(0.2, "share of the pairs held out to choose each path's state (none below 20 pairs)")
    guard: bool = _opt(True, "keep, per path, the held-out-best state, stage 1 included; off: keep the last epoch")
    patience: int = _opt(3, "image-path epochs without held-out improvement before stopping")
    precision: str = _opt("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16 or fp16", choices=("auto", "fp32", "bf16", "fp16"))
    seed: int = _opt(0, "seed of the split, batches, bank sample and LoRA initialisation")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.target_modules = tuple(self.target_modules) if self.target_modules else None
        need(self.precision in ("auto", "fp32", "bf16", "fp16"), f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {self.precision!r}")
        need(self.caption_bank in ("stage1", "old"), f"caption_bank must be 'stage1' or 'old', got {self.caption_bank!r}")
        need(self.text_folds is None or (isinstance(self.text_folds, int) and self.text_folds >= 1),
             f"text_folds must be an int >= 1 (or None for automatic), got {self.text_folds!r}")
        need(not (self.text_folds and self.text_folds > 1 and (not self.guard or self.val_fraction == 0)),
             "text_folds > 1 chooses the text head's epoch on held-out folds: it needs guard=True and val_fraction > 0")
        need(self.caption_bank_size >= 0,
             f"caption_bank_size must be >= 0 (0 ranks among the pair captions only), got {self.caption_bank_size}")
        need(self.confidence_temperature is None or self.confidence_temperature > 0,
             f"confidence_temperature must be positive (or None for the new model's own 1/logit_scale), got {self.confidence_temperature}")
        need(self.rank >= 1, f"rank must be >= 1, got {self.rank}")
        need(self.text_epochs >= 1 and self.text_batch_size >= 2 and self.text_lr > 0,
             f"text_epochs >= 1, text_batch_size >= 2 and text_lr > 0 are needed, got {self.text_epochs}, {self.text_batch_size}, {self.text_lr}")
        need(self.distill_texts >= 2 and self.distill_temperature > 0,
             f"distill_texts must be >= 2 and distill_temperature > 0, got {self.distill_texts} and {self.distill_temperature}")


#: the training-free methods and which ``BaselineConfig`` fields apply to each
BASELINE_OPTIONS = {
    "procrustes": ("support",),
    "linear": ("support", "ridge"),
    "slerp": ("support", "base", "ridge", "alpha", "alpha_text", "alpha_image", "grid"),
    "nlerp": ("support", "base", "ridge", "alpha", "alpha_text", "alpha_image", "grid"),
}
#: closed-form maps new -> old
MAP_KINDS = ("procrustes", "linear")
#: where a map's (new, old) support embeddings come from
SUPPORTS = ("text", "image", "joint")


@dataclass
class BaselineConfig(Options):
    """Options of the training-free methods; ``BASELINE_OPTIONS`` says which apply to which method."""

    what: ClassVar[str] = "baseline"

    support: str = _opt("text", "what the map is fitted on: text (the stage-1 texts), image (the pair images) or joint",
                        choices=SUPPORTS)
    ridge: float = _opt(DEFAULT_RIDGE, "relative ridge of the linear map (a fraction of the mean eigenvalue of X^T X)")
    base: str = _opt("procrustes", "the map fusion blends with: procrustes or linear", choices=MAP_KINDS)
    alpha: float | None = _opt(None, "fixed fusion weight of the new query for both directions (default: chosen on the pairs)")
    alpha_text: float | None = _opt(None, "fixed fusion weight for text queries (overrides alpha)")
    alpha_image: float | None = _opt(None, "fixed fusion weight for image queries (overrides alpha)")
    grid: tuple[float, ...] = _opt(ALPHA_GRID, "the fusion weights tried when choosing on the pairs")

    def __post_init__(self) -> None:
        need(self.support in SUPPORTS, f"unknown support {self.support!r}; choose one of {list(SUPPORTS)}")
        need(self.ridge >= 0, f"ridge must be >= 0, got {self.ridge}; use a small positive value such as 0.1")
        need(self.base in MAP_KINDS, f"base={self.base!r} is not a map xbt can fit without training; choose one of "
              f"{list(MAP_KINDS)}, or fuse an XBT adapter with xbt.fit.fuse")
        for name in ("alpha", "alpha_text", "alpha_image"):
            if getattr(self, name) is not None:
                setattr(self, name, check_alpha(name, getattr(self, name)))
        self.grid = tuple(check_alpha("grid value", a) for a in self.grid)

    @classmethod
    def for_method(cls, method: str, **kwargs: Any) -> BaselineConfig:
        """The options of ``method``, refusing those that do not apply to it (naming the method)."""
        if method not in BASELINE_OPTIONS:
            raise XBTError(f"unknown baseline {method!r}; choose one of {list(BASELINE_OPTIONS)}")
        valid = BASELINE_OPTIONS[method]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise XBTError(f"unknown option(s) {unknown} for method {method!r}; valid options are {sorted(valid)}")
        return cls(**kwargs)
