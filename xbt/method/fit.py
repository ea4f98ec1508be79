"""``xbt.fit``: from an OLD and a NEW CLIP plus texts (and optionally pairs) to an adapter.

The orchestration of every method. ``"xbt"``: check the inputs, embed the texts with both text
encoders (cached), run stage 1 (``xbt.stage1.train_projection``), then, given pairs, stage 2
(``xbt.stage2.train_stage2``). The training-free methods: ``"procrustes"`` / ``"linear"`` fit a
closed-form map (``xbt.maps``) on a support set (``support_embeddings``) into a ``hidden=0`` head;
``"slerp"`` / ``"nlerp"`` put query fusion on top of such a map (``fuse``), its weights chosen on
the pairs by ``xbt.fusion.select_alpha``. ``fuse`` also fuses any adapter, e.g. an XBT one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..adapters.adapter import Adapter
from ..baselines.config import BASELINE_OPTIONS
from ..baselines.fit import fit_baseline
from ..baselines.maps import orthogonal_procrustes
from ..core.checks import check_texts, check_vectors
from ..core.distributed import broadcast_module
from ..core.errors import XBTError
from ..core.seeding import seeded
from ..data.pairs import as_images, as_pairs
from ..data.texts import iter_texts
from ..models.embedding import CacheSpec, embed_images, embed_texts
from ..models.encoders import CLIPEncoder, as_encoder
from ..models.head import Projection
from ..models.shards import corpus_shards
from .config import Stage1Config, Stage2Config, noise_for
from .stage1 import train_projection
from .stage2 import PairData, train_stage2

#: every method ``fit`` knows; all but "xbt" are training-free
METHODS = ("xbt", *BASELINE_OPTIONS)
#: the first distinct stage-1 texts stage 2 keeps in memory (with their embeddings) to draw its caption bank and
#: distillation captions from: above its defaults (20,000 + 50,000), bounded for corpora of millions
STAGE2_TEXTS = 200_000


def check_model_pair(old: CLIPEncoder, new: CLIPEncoder) -> None:
    """Refuse to fit an adapter from a model to itself: there is nothing to upgrade."""
    if old.model is new.model or old.fingerprint == new.fingerprint:
        raise XBTError(
            f"old and new are the same model ({old.name}); pass the OLD model that embedded your gallery "
            "and the NEW model you want to query with"
        )


def unique_texts(texts: list[str]) -> list[str]:
    """``texts`` without repeats, first occurrence order kept.

    Repeated captions would be false negatives for each other inside an InfoNCE batch.
    """
    return list(dict.fromkeys(texts))


def fit(
    old: Any,
    new: Any,
    texts: Iterable[str],
    pairs: Any = None,
    method: str = "xbt",
    seed: int = 0,
    device: str | torch.device | None = None,
    cache: CacheSpec = None,
    verbose: bool = True,
    stage2: dict[str, Any] | None = None,
    old_image_embeddings: torch.Tensor | None = None,
    old_caption_embeddings: torch.Tensor | None = None,
    embed_pairs_with_old: bool = True,
    checkpoint_dir: str | None = None,
    use_stage1: bool = True,
    stage1: Adapter | None = None,
    unlabeled: Any = None,
    old_unlabeled_embeddings: torch.Tensor | None = None,
    **config: Any,
) -> Adapter:
    """Train (or fit) an adapter that maps the NEW model's embeddings into the OLD model's space.

    Args:
        old: the model that embedded the gallery (``xbt.load_clip`` result, open_clip CLIP or
            transformers ``CLIPModel``).
        new: the model to query with; its weights are never changed.
        texts: captions for stage 1: any stream ``xbt.stream.iter_texts`` reads (list, generator,
            ``datasets`` table or streaming dataset, ``pathlib.Path`` of a text file), embedded
            into the sharded cache (``xbt.shards``); with pairs, the first ``STAGE2_TEXTS`` also
            feed stage 2's caption bank.
        pairs: optional image-caption pairs (a ``datasets.Dataset`` with image and caption columns,
            or an iterable of ``(PIL image, caption)``): XBT stage 2, or the support set of a baseline.
        method: ``"xbt"`` (stage 1, + stage 2 with pairs) or a training-free baseline:
            ``"procrustes"``, ``"linear"``, ``"slerp"``, ``"nlerp"``.
        seed: the one source of randomness; the same seed gives the same adapter. The caller's
            global torch RNG is left as it was.
        device: where to embed and train (CUDA when present by default).
        cache: embedding cache folder, ``None`` for the default, ``False`` to disable.
        verbose: progress bars.
        stage2: (xbt) stage-2 options, see ``xbt.config.Stage2Config`` (rank, epochs, text_head,
            val_fraction...).
        old_image_embeddings: (xbt) your stored OLD gallery vectors of the pair images, float32
            [n_pairs, d_old]. By default ``fit`` embeds the pair images with ``old`` itself; stage 2
            distils the text head onto these vectors and validates both query paths against them.
        old_caption_embeddings: (xbt) likewise for the pair captions (default: embedded with ``old``).
        embed_pairs_with_old: (xbt) False: do not embed the pairs with ``old`` (vectors you pass are
            still used); without old vectors the text head is not trained and image queries are
            validated against stage-1 places. ``training["pair_old_vectors"]`` records what was done.
        checkpoint_dir: (xbt) stage 2 checkpoints here after every epoch and resumes a matching run.
        use_stage1: (xbt) False skips the text-only pretraining (for ablations: stage 2 then starts
            from Procrustes on the pairs' OLD image vectors).
        stage1: (xbt) a stage-1 adapter from an earlier ``fit(old, new, texts)`` of these same
            models: its head is used as it is, so one stage 1 on a large corpus can serve several
            stage-2 runs (``texts`` still feed the caption bank and the text head).
        unlabeled: (xbt) images without captions (a list of PIL images or a ``datasets.Dataset`` with an image
            column), e.g. gallery images you still have: the image head's ``old_images`` run also aligns them
            with their OLD vectors. They need no caption.
        old_unlabeled_embeddings: (xbt) your stored OLD gallery vectors of those images, float32 [n, d_old]
            (default: embedded with ``old``).
        **config: options of the method: stage-1 options for ``"xbt"`` (``xbt.config.Stage1Config``:
            noise_std, hidden, epochs...); ``xbt.config.BaselineConfig`` fields for the others.

    Returns:
        An ``Adapter`` whose ``encode_text`` / ``encode_image`` give float32 [n, d_old] unit vectors
        (a ``FusionAdapter`` for ``"slerp"`` / ``"nlerp"``).
    """
    if method not in METHODS:
        raise XBTError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    old_enc, new_enc = as_encoder(old), as_encoder(new)
    check_model_pair(old_enc, new_enc)
    xbt_only = {
        "stage2": stage2 is not None,
        "stage1": stage1 is not None,
        "old_image_embeddings": old_image_embeddings is not None,
        "old_caption_embeddings": old_caption_embeddings is not None,
        "embed_pairs_with_old": not embed_pairs_with_old,
        "checkpoint_dir": checkpoint_dir is not None,
        "use_stage1": not use_stage1,
        "unlabeled": unlabeled is not None,
        "old_unlabeled_embeddings": old_unlabeled_embeddings is not None,
    }
    given = [name for name, on in xbt_only.items() if on]
    if method != "xbt":
        if given:
            raise XBTError(
                f"{given} only apply to method 'xbt' (stage 2); method {method!r} is training-free and would "
                "ignore them: drop them, or use method='xbt'"
            )
        items = unique_texts(check_texts(iter_texts(texts)))
        opts = {"seed": seed, "device": device, "cache": cache, "verbose": verbose}
        return fit_baseline(method, old_enc, new_enc, items, pairs=pairs, **opts, **config)
    stage1_cfg = Stage1Config.from_kwargs(**{"seed": seed, **config})
    if stage1_cfg.noise_std is None:  # the NEW model's modality gap widens with its logit scale
        stage1_cfg = dataclasses.replace(stage1_cfg, noise_std=noise_for(new_enc.logit_scale))
    if stage2 is not None and not isinstance(stage2, dict):
        raise XBTError(
            f"stage2 must be a dict of stage-2 options, got {type(stage2).__name__} ({stage2!r:.40}); "
            "pass e.g. stage2={'epochs': 3}"
        )
    stage2_cfg = Stage2Config.from_kwargs(**{"seed": seed, **(stage2 or {})})
    if pairs is None and given:
        raise XBTError(f"{given} only apply to stage 2, which trains on image-caption pairs: pass pairs=...")
    old_image_embeddings, old_caption_embeddings, old_unlabeled_embeddings = (  # refused before stage 1 runs
        None if v is None else check_vectors(v, f"old_{kind}_embeddings", old_enc.embed_dim)
        for kind, v in (
            ("image", old_image_embeddings),
            ("caption", old_caption_embeddings),
            ("unlabeled", old_unlabeled_embeddings),
        )
    )
    if old_unlabeled_embeddings is not None and unlabeled is None:
        raise XBTError("old_unlabeled_embeddings are the OLD vectors of unlabeled images: pass unlabeled=... too")
    extra_images = as_images(unlabeled) if unlabeled is not None else None
    if extra_images is not None and old_unlabeled_embeddings is not None:
        if tuple(old_unlabeled_embeddings.shape) != (len(extra_images), old_enc.embed_dim):
            raise XBTError(
                f"old_unlabeled_embeddings must be [{len(extra_images)}, {old_enc.embed_dim}] (one OLD vector per "
                f"unlabeled image), got {tuple(old_unlabeled_embeddings.shape)}"
            )
    if extra_images is not None and old_unlabeled_embeddings is None and not embed_pairs_with_old:
        raise XBTError(
            "unlabeled images are aligned with their OLD vectors: pass old_unlabeled_embeddings=..., or let fit "
            "embed them with the old model (embed_pairs_with_old=True)"
        )
    if stage1 is not None:
        _check_stage1(stage1, old_enc, new_enc, use_stage1, config)

    opts = {"device": device, "cache": cache, "verbose": verbose}
    text_step = _text_step(old_enc, new_enc, texts, stage1, stage1_cfg, use_stage1, pairs is not None, **opts)
    projection, training = text_step.projection, text_step.training
    if pairs is None:
        return Adapter(new_enc, projection, method=method, old=old_enc, training=training)

    images, captions = as_pairs(pairs)
    old_vectors, training["pair_old_vectors"] = _old_pair_vectors(
        old_enc, images, captions, old_image_embeddings, old_caption_embeddings, embed_pairs_with_old, **opts
    )
    if not use_stage1:
        projection = _projection_from_old_images(new_enc, images, old_vectors["images"], old_enc, stage1_cfg, **opts)
    texts_for_stage2 = (
        dict(texts=text_step.texts, texts_new=text_step.new, texts_old=text_step.old) if use_stage1 else {}
    )
    data = PairData(
        images,
        captions,
        old_images=old_vectors["images"],
        old_captions=old_vectors["captions"],
        stage1_temperature=training.get("stage1", {}).get("temperature", stage1_cfg.temperature),
        **texts_for_stage2,
        **_unlabeled_vectors(old_enc, new_enc, extra_images, old_unlabeled_embeddings, **opts),
    )
    if stage2_cfg.image_tower == "frozen" and stage2_cfg.text_prior_noise is None:  # the noise stage 1 trained with
        used = training.get("stage1", {}).get("noise_std")
        stage2_cfg = dataclasses.replace(stage2_cfg, text_prior_noise=stage1_cfg.noise_std if used is None else used)
    result = train_stage2(
        new_enc, projection, data, stage2_cfg, checkpoint_dir=checkpoint_dir, device=device, verbose=verbose
    )
    training["stage2"] = stage2_cfg.to_dict()
    training["n_pairs"] = len(images)
    training["metrics"]["stage2"] = result.record
    training["kept"] = {m: _kept(result.record[m]) for m in ("text", "image")}
    return Adapter(
        new_enc,
        heads=result.heads,
        method=method,
        old=old_enc,
        training=training,
        lora=result.lora,
        lora_modalities=("image",),
    )


@dataclass
class _TextStep:
    """What the text-only step hands on: the stage-1 head (``None`` without stage 1), the training record, and
    the first distinct stage-1 texts with their NEW / OLD text vectors (stage 2's caption bank and distractors)."""

    projection: Projection | None
    training: dict[str, Any]
    texts: list[str] | None = None
    new: torch.Tensor | None = None
    old: torch.Tensor | None = None


def _text_step(
    old_enc, new_enc, texts, stage1, cfg: Stage1Config, use_stage1: bool, keep_texts: bool, device, cache, verbose
) -> _TextStep:
    """Stage 1 on the texts (or the given ``stage1`` adapter's head), streamed through the sharded embedding cache,
    so memory does not grow with the corpus; without stage 1 only the texts are checked."""
    if not use_stage1:
        items = unique_texts(check_texts(iter_texts(texts)))
        if len(items) < 2:
            raise XBTError(f"stage 1 needs at least 2 distinct texts (it contrasts them), got {len(items)}")
        return _TextStep(None, {"n_texts": len(items), "metrics": {}})
    keep = STAGE2_TEXTS if keep_texts else 0
    with corpus_shards(new_enc, old_enc, texts, cache, device=device, verbose=verbose, keep_texts=keep) as shards:
        n_texts, items = len(shards), shards.texts
        if n_texts < 2:
            raise XBTError(f"stage 1 needs at least 2 distinct texts (it contrasts them), got {n_texts}")
        if stage1 is None:
            projection, history = train_projection(shards, None, cfg, verbose=verbose)
            broadcast_module(projection)  # several processes: rank 0's stage 1 is everyone's
            training_stage1 = cfg.to_dict()
        else:
            projection, history = stage1.projection, stage1.training["metrics"]["stage1"]
            training_stage1 = stage1.training["stage1"]
        new_text, old_text = shards.head(len(items)) if items else (None, None)
    training = {"n_texts": n_texts, "metrics": {"stage1": history}, "stage1": training_stage1}
    return _TextStep(projection, training, items, new_text, old_text)


def _old_pair_vectors(
    old_enc,
    images,
    captions,
    old_image_embeddings,
    old_caption_embeddings,
    embed_pairs_with_old: bool,
    device,
    cache,
    verbose,
) -> tuple[dict, dict[str, str]]:
    """The OLD-model vectors of the pair images and captions (given, embedded with ``old``, or ``None``), and
    where each came from (``training["pair_old_vectors"]``)."""
    old_vectors, sources = {}, {}
    for kind, given in (("images", old_image_embeddings), ("captions", old_caption_embeddings)):
        name = f"old_{kind[:-1]}_embeddings"
        if given is not None:
            given = check_vectors(given, name, old_enc.embed_dim)
            if tuple(given.shape) != (len(images), old_enc.embed_dim):
                raise XBTError(
                    f"{name} must be [{len(images)}, {old_enc.embed_dim}] (one OLD-model vector per pair "
                    f"{kind[:-1]}), got {tuple(given.shape)}"
                )
            old_vectors[kind], sources[kind] = given, "given"
        elif embed_pairs_with_old:
            embed = embed_images if kind == "images" else embed_texts
            items = images if kind == "images" else captions
            old_vectors[kind] = embed(old_enc, items, device=device, cache=cache, verbose=verbose)
            sources[kind] = "embedded with the old model"
        else:
            old_vectors[kind], sources[kind] = None, "none"
    if verbose:
        print(
            f"xbt stage 2: OLD vectors of the {len(images)} pair images: {sources['images']}; "
            f"of their captions: {sources['captions']}"
        )
    return old_vectors, sources


def _unlabeled_vectors(old_enc, new_enc, images, old_given, device, cache, verbose) -> dict:
    """The NEW and OLD vectors of the unlabeled images (``PairData.unlabeled_new`` / ``unlabeled_old``), or none."""
    if images is None:
        return {}
    new_vectors = embed_images(new_enc, images, device=device, cache=cache, verbose=verbose)
    old_vectors = (
        old_given
        if old_given is not None
        else embed_images(old_enc, images, device=device, cache=cache, verbose=verbose)
    )
    if verbose:
        print(
            f"xbt stage 2: {len(images)} unlabeled images; their OLD vectors "
            f"{'given' if old_given is not None else 'embedded with the old model'}"
        )
    return {"unlabeled_new": new_vectors, "unlabeled_old": old_vectors}


def _check_stage1(stage1: Any, old: CLIPEncoder, new: CLIPEncoder, use_stage1: bool, config: dict) -> None:
    """Refuse a ``stage1=`` adapter that is not a stage-1 XBT adapter of these same two models."""
    if (
        not isinstance(stage1, Adapter)
        or stage1.method != "xbt"
        or stage1.lora is not None
        or "stage1" not in stage1.training
        or stage1.heads["text"] is not stage1.heads["image"]
    ):
        raise XBTError("stage1= takes the adapter of a text-only fit, xbt.fit(old, new, texts), with no pairs")
    if not use_stage1 or config:
        raise XBTError(
            f"stage1= reuses a trained stage 1: drop {'use_stage1=False' if not use_stage1 else sorted(config)}, "
            "which would configure another one"
        )
    for role, ref, enc in (("old", stage1.old_ref, old), ("new", stage1.new_ref, new)):
        if ref.fingerprint != enc.fingerprint:
            raise XBTError(
                f"the stage1= adapter was trained for another {role} model ({ref.label}, fingerprint "
                f"{ref.fingerprint}) "
                f"than the one given ({enc.name}, {enc.fingerprint}); pass the models it was trained on"
            )


def _kept(path_record: dict) -> dict[str, str]:
    """What a query path kept and why, in words (training record and model card)."""
    choice = path_record.get("choice")
    if choice is None:
        return {
            "kept": path_record.get("kept", "last stage-2 epoch (no held-out pairs)"),
            "reason": path_record.get("reason", "too few pairs to hold any out (or val_fraction=0): no guard"),
        }
    return {"kept": choice["chosen"], "reason": choice["reason"]}


def _projection_from_old_images(
    new_enc, images, old_image_embeddings, old_enc, cfg, device, cache, verbose
) -> Projection:
    """Without stage 1: start the projection at Procrustes between new and OLD image embeddings of the pairs.

    Only the old gallery vectors of the pair images link the new model to the old space then.
    """
    if old_image_embeddings is None:
        raise XBTError(
            "use_stage1=False leaves nothing that knows the old space: pass old_image_embeddings=... "
            "(your OLD-model vectors of the pair images) or keep stage 1"
        )
    new_img = embed_images(new_enc, images, device=device, cache=cache, verbose=verbose)
    with seeded(cfg.seed):  # the MLP's initialisation
        projection = Projection(new_enc.embed_dim, old_enc.embed_dim, cfg.hidden)
    with torch.no_grad():
        projection.linear.weight.copy_(orthogonal_procrustes(new_img, F.normalize(old_image_embeddings, dim=-1)))
    return projection
