"""Stage 2's heads on the frozen NEW towers: the text head (distilled) and the image head (trained on the pairs).

**The text head** (``distill_text_head``): a copy of the stage-1 head that ranks the pair images' OLD vectors as
the new model ranks their new ones and finds each pair caption's own image among them; its best held-out epoch is
kept, stage 1 included. The losses and why: docs/method.md.

**The image head** (``train_image_head``): a copy of the stage-1 head trained on frozen NEW image features against
the pairs' OLD vectors, one run per loss of ``Stage2Config.image_losses``, each run's end state a candidate of the
guard. Both heads run on frozen towers: merged, a query costs what the bare new model's does.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..core.errors import XBTError
from ..data.pairs import rows_of
from ..models.head import Projection
from .config import DISTILL_TEMPERATURE_FACTOR, TEXT_PAIR_TEMPERATURE_FACTOR, Stage2Config
from .guard import T2I_MEASURE, PathChoice, geometric_mean_rank, owned_ranks, paired_gain, t2i_ranks
from .losses import (
    agreed_texts,
    cosine_gap,
    multi_positive_nce,
    pseudo_captions,
    ranking_distillation,
    spread_temperature,
    stage1_loss,
)
from .stage1 import add_noise


def distill_text_head(
    stage1_head: Projection,
    texts_new: torch.Tensor,
    images_new: torch.Tensor,
    images_old: torch.Tensor,
    teacher_temperature: float,
    config: Stage2Config,
    val_texts_new: torch.Tensor | None = None,
    val_images_old: torch.Tensor | None = None,
    verbose: bool = True,
    other_folds: list[list[torch.Tensor]] | None = None,
    on_state: Callable[[Projection], None] | None = None,
    pair_texts_new: torch.Tensor | None = None,
    pair_owner: torch.Tensor | None = None,
) -> tuple[Projection, PathChoice | None, dict]:
    """Train the text head (a copy of ``stage1_head``) by distillation; keep its best held-out state.

    Args:
        stage1_head: the stage-1 projection (copied, never changed).
        texts_new: NEW-model embeddings of the distillation captions, float32 [n, d_new], unit rows.
        images_new, images_old: the training pair images, NEW [m, d_new] and OLD [m, d_old] (row ``j`` is one image
            in both): the teacher ranks the first, the student the second.
        teacher_temperature: the new model's own temperature (``1 / logit_scale``).
        config: the ``text_*`` options, ``distill_temperature``, ``guard`` and ``seed`` are read.
        val_texts_new, val_images_old: held-out pair captions [v, d_new] and the OLD vectors of their images
            [v, d_old]; without them every epoch is kept blind and the last one wins.
        other_folds: held-out log ranks of the same run on other folds (``fold_scores``); each state is then scored
            over all folds' queries and replaces stage 1 only on a paired log-rank gain above one standard error.
        on_state: called with the head (eval mode) at stage 1 and after every epoch.
        pair_texts_new, pair_owner: training pair captions [r, d_new] and each one's row of ``images_old`` (int64
            [r]): each batch also draws as many, each to find its own image's OLD vector among all of
            ``images_old`` (``text_pair_weight``). Without them, distillation alone (as a refresh does).

    Returns ``(head, choice, history)``: the kept head (eval mode, no grad), the ``PathChoice`` (None without
    validation) and per-epoch losses and held-out scores.
    """
    if len(images_new) != len(images_old) or len(images_new) < 2:
        raise XBTError(
            f"distillation needs the same training images under both models (at least 2), got {len(images_new)} and "
            f"{len(images_old)}"
        )
    if len(texts_new) < 2:
        raise XBTError(f"distillation needs at least 2 captions, got {len(texts_new)}")
    cfg = config
    gen = torch.Generator().manual_seed(cfg.seed)
    head = copy.deepcopy(stage1_head).train().requires_grad_(True)
    anchors = stage1_head.eval().in_chunks(texts_new)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.text_lr, weight_decay=1e-4)
    steps = cfg.text_epochs * math.ceil(len(texts_new) / cfg.text_batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    validate = val_texts_new is not None and val_images_old is not None and len(val_texts_new) > 0
    paired = pair_texts_new is not None and len(pair_texts_new) > 0 and cfg.text_pair_weight > 0
    if paired and (pair_owner is None or len(pair_owner) != len(pair_texts_new)):
        raise XBTError("pair_owner must give one image row per pair caption")
    spread = spread_temperature(images_old, 1.0)  # the OLD image vectors' cosine spread, read once for both
    pair_temperature = cfg.text_pair_temperature or TEXT_PAIR_TEMPERATURE_FACTOR * spread
    distill_temperature = cfg.distill_temperature or DISTILL_TEMPERATURE_FACTOR * spread

    def log_ranks(h: Projection, state: int) -> torch.Tensor:
        """float64: the held-out queries' log ranks under ``h``, then the other folds' at this state (0: stage 1)."""
        own = torch.log(t2i_ranks(h.in_chunks(val_texts_new), val_images_old))
        if not other_folds:
            return own
        history["own_geo_mean_rank"].append(math.exp(float(own.mean())))
        return torch.cat(
            [own] + [f[state] if state < len(f) else torch.full_like(f[0], math.inf) for f in other_folds]
        )

    def clear_gain(logs: torch.Tensor) -> bool:  # a paired gain over stage 1 by more than one standard error
        mean, se = paired_gain(stage1_logs, logs)
        return mean > se

    measure = T2I_MEASURE + (
        f", pooled over {1 + len(other_folds)} folds of the pairs; a state replaces stage 1 only if its "
        "paired per-query log-rank gain exceeds one standard error"
        if other_folds
        else ""
    )
    choice = PathChoice("text", measure) if validate else None
    best = copy.deepcopy(head.state_dict())
    history: dict = {"train_loss": [], "pair_temperature": pair_temperature if paired else None}
    history.update(distill_temperature=distill_temperature)
    if other_folds:
        history.update(
            own_geo_mean_rank=[],
            clear_gain=[],
            other_folds=[[math.exp(float(e.mean())) for e in f] for f in other_folds],
        )
    stage1_logs = log_ranks(head.eval(), 0) if choice is not None else None
    if choice is not None:
        choice.add("stage 1", math.exp(float(stage1_logs.mean())))
    if on_state is not None:
        on_state(head.eval())
    history["val_geo_mean_rank"] = [choice.scores["stage 1"]] if choice else []
    bar = tqdm(range(1, cfg.text_epochs + 1), desc="stage 2 (text head)", disable=not verbose, leave=False)
    for epoch in bar:
        head.train()
        order = torch.randperm(len(texts_new), generator=gen)
        total, batches = 0.0, 0
        for s in range(0, len(order), cfg.text_batch_size):
            idx = order[s : s + cfg.text_batch_size]
            x = texts_new[idx]
            z = head(x)
            loss = ranking_distillation(z, images_old, distill_temperature, x, images_new, teacher_temperature)
            if cfg.text_anchor_weight:
                loss = loss + cfg.text_anchor_weight * cosine_gap(z, anchors[idx])
            if paired:  # as many pair captions, each to find its own image's OLD vector among all of them
                j = torch.randint(len(pair_owner), (min(len(idx), len(pair_owner)),), generator=gen)
                logits = head(pair_texts_new[j]) @ images_old.T / pair_temperature
                loss = loss + cfg.text_pair_weight * F.cross_entropy(logits, pair_owner[j])
            if not torch.isfinite(loss):  # diverged: stop here, the best earlier state is kept
                history["diverged_at_epoch"] = epoch
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, batches = total + loss.item(), batches + 1
        if "diverged_at_epoch" in history:
            break
        history["train_loss"].append(total / max(1, batches))
        if on_state is not None:
            on_state(head.eval())
        if choice is not None and cfg.guard:
            logs = log_ranks(head.eval(), epoch)
            val = math.exp(float(logs.mean()))
            history["val_geo_mean_rank"].append(val)
            eligible = clear_gain(logs) if other_folds else True
            if other_folds:
                history["clear_gain"].append(eligible)
            if choice.add(f"stage 2 (epoch {epoch})", val, eligible=eligible):
                best = copy.deepcopy(head.state_dict())
            bar.set_postfix(val=f"{val:.3f}")
        else:
            best = copy.deepcopy(head.state_dict())
            if choice is not None:  # guard off: scored for the record, the last epoch kept
                val = math.exp(float(log_ranks(head.eval(), epoch).mean()))
                history["val_geo_mean_rank"].append(val)
                choice.scores[f"stage 2 (epoch {epoch})"] = val
                choice.chosen = f"stage 2 (epoch {epoch})"
    head.load_state_dict(best)
    return head.eval().requires_grad_(False), choice, history


def fold_scores(
    stage1_head: Projection,
    texts_new: torch.Tensor,
    images_new: torch.Tensor,
    images_old: torch.Tensor,
    captions_new: torch.Tensor,
    folds: list[torch.Tensor],
    teacher_temperature: float,
    config: Stage2Config,
    verbose: bool = True,
) -> list[list[torch.Tensor]]:
    """The text head's held-out log ranks on each fold but the first: [fold][stage 1, epoch 1, ...], float64.

    ``images_new`` / ``images_old`` / ``captions_new`` hold ALL pairs, one row each ([n, d]); ``folds`` are disjoint
    index sets of them. For each fold after the first, a head is trained on the pairs outside it, every epoch
    scored on the fold, so the first fold (the caller's held-out split) can choose its epoch by all folds' scores
    (``distill_text_head(other_folds=...)``): a few hundred held-out pairs cannot tell a real gain from noise.
    """
    blind = dataclasses.replace(config, guard=False)
    out = []
    everything = torch.arange(len(images_new))
    for fold in tqdm(folds[1:], desc="stage 2 (text head folds)", disable=not verbose, leave=False):
        train = everything[~torch.isin(everything, fold)]
        logs: list[torch.Tensor] = []
        distill_text_head(
            stage1_head,
            texts_new,
            images_new[train],
            images_old[train],
            teacher_temperature,
            blind,
            verbose=False,
            on_state=lambda h: logs.append(torch.log(t2i_ranks(h.in_chunks(captions_new[fold]), images_old[fold]))),
            pair_texts_new=captions_new[train],
            pair_owner=torch.arange(len(train)),  # the galleries are per row here: row i's image is row i
        )
        out.append(logs)
    return out


# ------------------------------------------- The image head: image queries on the frozen NEW image tower. ------

I2T_HEAD_MEASURE = (
    "I2T: held-out pair images search the OLD vectors of their captions among distractor captions; each image "
    "ranks by its best-placed own caption; geometric-mean rank"
)
PSEUDO_MEASURE = "; each image's pseudo-captions count as its own"
IMAGE_LOSSES = ("captions", "old_images")  #: the image head's losses by name (``Stage2Config.image_losses``)
#: the ``captions`` run needs this many captions per pair image; pseudo-captions join under it (BENCHMARKS.md)
MIN_CAPTIONS_PER_IMAGE = 2.0


@dataclasses.dataclass
class ImageHeadInputs:
    """What the frozen-tower image head trains and is judged on, prepared by stage 2.

    Attributes:
        new_img: the bare NEW model's vectors of the distinct pair images, float32 [n_img, d_new] unit rows.
        old_img: their OLD vectors [n_img, d_old], or ``None``.
        old_captions: the OLD vectors of the pair captions, one per row [n_rows, d_old], or ``None``;
            ``owner`` [n_rows] (int64) names each row's image.
        train, val: the training and held-out images (int64 indices into ``new_img``); held out by image,
            so no held-out caption's image was trained on.
        val_gallery: the held-out search, OLD vectors of the held-out captions then distractor captions
            [m, d_old]; ``val_owner`` [m] (int64) each row's position in ``val``, -1 for a distractor.
        texts_new, texts_old: stage-1 texts under both models [k, d] (text prior, pseudo-captions), or ``None``.
        temperature: the InfoNCE temperature of every loss.
        unlabeled_new, unlabeled_old: images without captions under both models [u, d_new] / [u, d_old], or
            ``None``; each ``old_images`` batch draws as many of them beside its pair images.
        text_temperature: stage 1's temperature, kept by its text loss beside the ``old_images`` run."""

    new_img: torch.Tensor
    old_img: torch.Tensor | None
    old_captions: torch.Tensor | None
    owner: torch.Tensor
    train: torch.Tensor
    val: torch.Tensor
    val_gallery: torch.Tensor
    val_owner: torch.Tensor
    texts_new: torch.Tensor | None
    texts_old: torch.Tensor | None
    temperature: float
    unlabeled_new: torch.Tensor | None = None
    unlabeled_old: torch.Tensor | None = None
    text_temperature: float = 0.05


def train_image_head(
    stage1_head: Projection, x: ImageHeadInputs, config: Stage2Config, verbose: bool = True
) -> tuple[Projection, PathChoice | None, dict, torch.Tensor | None]:
    """Train one image head per loss in ``config.image_losses`` from a copy of ``stage1_head``; keep the held-out
    best state of them all, stage 1 included.

    - ``"captions"``: each pair image against the OLD vectors of all its captions and ``pseudo_captions``
      (multi-positive InfoNCE; the other images' in the batch are the negatives).
    - ``"old_images"``: each pair image against its own image's OLD vector (InfoNCE within the batch), beside
      stage 1's text loss on noised stage-1 texts (``text_prior_weight``), which keeps the text knowledge that
      carries the result where an image has a single caption.

    Returns ``(head, choice, history, kept ranks, old ranks)``: the kept head (eval, no grad), the ``PathChoice``
    (None without held-out images), per-loss histories, and the held-out ranks (float64 [len(val)]) of the kept
    head and of the old model's image queries among the held-out captions and, where pseudo-captions are used, the
    memory's texts both models rank top for the image (``losses.agreed_texts``; None without OLD images).
    """
    cfg = config
    validate = len(x.val) > 0
    own_per_image = len(x.owner) / max(1, len(x.new_img))
    memory = x.texts_new is not None and x.texts_old is not None
    use = cfg.pseudo_captions and own_per_image < MIN_CAPTIONS_PER_IMAGE and memory  # five real captions teach more
    pseudo = pseudo_captions(x.new_img, x.texts_new, x.texts_old, cfg.pseudo_captions) if use else None
    gallery, owner = x.val_gallery, x.val_owner
    if pseudo is not None and validate:  # a held-out image's pseudo-captions count as its own: its one caption is a
        gallery = torch.cat([gallery, pseudo[x.val].flatten(0, 1)])  # partial description, the test gallery's five
        owner = torch.cat([owner, torch.arange(len(x.val)).repeat_interleave(pseudo.shape[1])])  # are not
    choice = (
        PathChoice("image", I2T_HEAD_MEASURE + (PSEUDO_MEASURE if pseudo is not None else "")) if validate else None
    )

    def ranks(h: Projection) -> torch.Tensor:
        return owned_ranks(h.in_chunks(x.new_img[x.val]), gallery, owner)

    best_state, stage1_ranks = stage1_head, ranks(stage1_head.eval()) if validate else None
    if choice is not None:
        choice.add("stage 1", geometric_mean_rank(stage1_ranks))
    history: dict = {}
    captions_per_image = own_per_image + (pseudo.shape[1] if pseudo is not None else 0)
    usable = [
        name
        for name in cfg.image_losses
        if (x.old_captions if name == "captions" else x.old_img) is not None
        and (name != "captions" or captions_per_image >= MIN_CAPTIONS_PER_IMAGE)
    ]
    if "captions" in cfg.image_losses and "captions" not in usable and x.old_captions is not None:
        history["captions"] = {
            "skipped": f"{captions_per_image:.2f} captions per image, under {MIN_CAPTIONS_PER_IMAGE}: one caption "
            "describes an image too partially to train image queries on (see BENCHMARKS.md)"
        }
    for name in usable:
        head = copy.deepcopy(stage1_head).train().requires_grad_(True)
        record = history[name] = {"train_loss": [], "val_geo_mean_rank": []}
        if name == "captions" and pseudo is not None:
            record["pseudo_captions"] = pseudo.shape[1]
        kept = _fit_head(head, name, x, cfg, record, choice, ranks, verbose, pseudo, stage1_ranks)
        if kept is not None:
            best_state = kept
    if not usable:
        history["skipped"] = "no OLD vectors of the pair captions or images to train on"
    if usable and (choice is None or not cfg.guard):  # nothing held out, or the guard off: the last run's last epoch
        best_state = head
        if choice is not None:
            choice.chosen = f"stage 2 ({usable[-1]}, epoch {len(history[usable[-1]]['train_loss'])})"
    own, mine = x.val_gallery[x.val_owner >= 0], x.val_owner[x.val_owner >= 0]  # the held-out captions and
    if validate and pseudo is not None and x.old_img is not None:  # the memory's texts both models rank top
        more = agreed_texts(x.new_img[x.val], x.old_img[x.val], x.texts_new, x.texts_old, cfg.pseudo_captions)
        own, mine = torch.cat([own, more[0]]), torch.cat([mine, more[1]])
    best_ranks = owned_ranks(best_state.eval().in_chunks(x.new_img[x.val]), own, mine) if validate else None
    old = owned_ranks(x.old_img[x.val], own, mine) if validate and x.old_img is not None else None
    return best_state.eval().requires_grad_(False), choice, history, best_ranks, old


def _fit_head(head, name, x, cfg, record, choice, ranks, verbose, pseudo=None, stage1_ranks=None):
    """Train ``head`` with loss ``name`` through its whole schedule; a copy of it when its end state, the only
    candidate, became the chosen one (every epoch's held-out score is recorded; docs/method.md)."""
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs * math.ceil(len(x.train) / cfg.batch_size))
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"stage 2 (image head, {name})", disable=not verbose, leave=False)
    for epoch in bar:
        order = x.train[torch.randperm(len(x.train), generator=gen)]
        total, batches = 0.0, 0
        for s in range(0, len(order), cfg.batch_size):
            b = order[s : s + cfg.batch_size]
            if len(b) < 2:
                continue
            z = head(x.new_img[b])
            if name == "captions":
                rows = rows_of(x.owner, b)
                positive, gallery = b[:, None] == x.owner[rows][None, :], x.old_captions[rows]
                if pseudo is not None:  # each image's pseudo-captions, its positives beside its own captions
                    own = torch.eye(len(b), dtype=torch.bool).repeat_interleave(pseudo.shape[1], dim=1)
                    positive, gallery = torch.cat([positive, own], 1), torch.cat([gallery, pseudo[b].flatten(0, 1)])
                loss = multi_positive_nce(z, gallery, positive, x.temperature)
            else:
                targets = x.old_img[b]
                if x.unlabeled_new is not None:  # as many unlabeled images beside the pair images
                    u = torch.randint(len(x.unlabeled_new), (len(b),), generator=gen)
                    z, targets = torch.cat([z, head(x.unlabeled_new[u])]), torch.cat([targets, x.unlabeled_old[u]])
                loss = multi_positive_nce(z, targets, torch.eye(len(z), dtype=torch.bool), x.temperature)
                if cfg.text_prior_weight and x.texts_new is not None:
                    t = torch.randint(len(x.texts_new), (cfg.text_batch_size,), generator=gen)
                    noised = add_noise(x.texts_new[t], cfg.text_prior_noise, gen)
                    loss = loss + cfg.text_prior_weight * stage1_loss(
                        head(noised), x.texts_old[t], x.text_temperature, 0.5
                    )
            if not torch.isfinite(loss):  # diverged: this run offers no candidate
                record["diverged_at_epoch"] = epoch
                return None
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, batches = total + loss.item(), batches + 1
        record["train_loss"].append(total / max(1, batches))
        if choice is None:
            continue
        epoch_ranks = ranks(head.eval())
        head.train()
        score = geometric_mean_rank(epoch_ranks)
        record["val_geo_mean_rank"].append(score)
        bar.set_postfix(val=f"{score:.3f}")
    if choice is None:
        return None
    gain, se = paired_gain(torch.log(stage1_ranks), torch.log(epoch_ranks))
    record["gain_over_stage1"] = [gain, se]  # mean per-image log-rank gain and its standard error
    if choice.add(f"stage 2 ({name}, epoch {epoch})", score, eligible=cfg.guard and gain > se):  # guard off: scored
        return copy.deepcopy(head).eval()
    return None
