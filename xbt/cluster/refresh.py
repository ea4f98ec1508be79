"""``refresh_adapter``: the adapter learns from what a backfill re-embedded, for the part not re-embedded yet.

Each re-embedded item has its OLD vector (what the rest of the gallery still is) and its NEW one side by
side: exactly what the adapter's query path is short of. A refresh teaches the query head that searches
this gallery to rank the re-embedded items' OLD vectors the way the bare new model ranks their NEW ones
(``method.heads.distill_text_head``'s ranking distillation, the same head, the gallery's items as the
bank), for query examples of the other modality: texts for an image gallery, images for a caption gallery.
The items are the training signal, so they need no caption.

The guard reads labelled pairs the refresh never trains on (``val_queries_new`` and the OLD vectors of their
right items, ``val_targets_old``: held-out pair captions and their images for an image gallery, pair images
and their captions for a caption gallery; a guard query that is the very text of one of the items' own
queries the refresh trains on is left out, since captions repeat and it would score recall of a trained
label): each query searches its right item among the OLD vectors of a
held-out share of the re-embedded items, through the head; a head's score is the geometric-mean rank of the
right item. A refreshed state (each epoch of each run) replaces the current head only if it is picked on one
half of the labelled queries and confirmed on the other (``method.guard.pick_and_confirm``: a clear log-rank
gain and at least as many right items first on both); otherwise the adapter is returned unchanged, and the
record says which.
Why labelled pairs, and why the right items ranked first count too: BENCHMARKS.md, "Backfill past one machine".
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..adapters.adapter import Adapter
from ..core.errors import XBTError, need
from ..core.options import Options, option
from ..method.config import Stage2Config
from ..method.guard import pick_and_confirm, target_ranks
from ..method.heads import distill_text_head
from ..method.losses import cosine_gap, multi_positive_nce
from ..vectordb.interface import as_vectors

#: the query modality whose head searches a gallery of these items
QUERY_OF = {"image": "text", "text": "image"}


@dataclass
class RefreshConfig(Options):
    """A refresh's options: the distillation of the query head on the re-embedded items."""

    what: ClassVar[str] = "refresh"

    epochs: int = option(3, "epochs over the query examples")
    batch_size: int = option(512, "query examples per batch")
    lr: float = option(1e-3, "learning rate of the query head")
    temperature: float = option(0.05, "temperature of the student's ranking of the items' OLD vectors")
    anchor_weight: float = option(1.0, "the refreshed queries stay near the current head's")
    val_fraction: float = option(0.2, "share of the re-embedded items held out as the guard's distractors")
    max_items: int = option(20_000, "at most this many re-embedded items (a random sample) form the bank")
    seed: int = option(0, "seed of the split, the sample and the batches")

    def __post_init__(self) -> None:
        super().__post_init__()  # the types, before the ranges
        need(
            self.epochs >= 1 and self.batch_size >= 2 and self.lr > 0 and self.temperature > 0,
            f"epochs >= 1, batch_size >= 2, lr > 0 and temperature > 0 are needed, got {self.epochs}, "
            f"{self.batch_size}, {self.lr} and {self.temperature}",
        )
        need(0 < self.val_fraction < 1, f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        need(self.anchor_weight >= 0, f"anchor_weight must be >= 0, got {self.anchor_weight}")
        need(self.max_items >= 10, f"max_items must be >= 10, got {self.max_items}")


def refresh_adapter(
    adapter: Adapter,
    items: str,
    old_vectors: Any,
    new_vectors: Any,
    queries_new: Any,
    val_queries_new: Any,
    val_targets_old: Any,
    config: RefreshConfig | dict | None = None,
    verbose: bool = True,
    item_queries_new: Any = None,
    item_of_query: Any = None,
) -> tuple[Adapter, dict[str, Any]]:
    """Refresh the head that searches a gallery of ``items`` from its re-embedded items (module docstring).

    Args:
        adapter: the adapter serving the gallery's old part; its query path for the gallery must start from
            the bare NEW model's embeddings (a head on the frozen tower; a LoRA path is refused).
        items: what the gallery holds, ``"image"`` or ``"text"``: its queries are the other modality.
        old_vectors, new_vectors: the re-embedded items under both models, float32 [m, d_old] / [m, d_new]
            unit rows, row ``j`` one item (``store.vectors("old", ids)`` and ``("new", ids)``).
        queries_new: the bare NEW model's embeddings of query examples [q, d_new] (captions like the users'
            for an image gallery, images for a caption gallery): ``embed_texts(adapter.new, texts)``.
        val_queries_new, val_targets_old: the guard's labelled pairs: queries [v, d_new] (bare NEW model) and the
            OLD vectors of their right items [v, d_old], row ``i`` query ``i``'s (module docstring).
        config: ``RefreshConfig`` fields.
        item_queries_new, item_of_query: where the re-embedded items come with their own queries (an image
            gallery's captions): their NEW vectors [c, d_new] and the row of ``old_vectors`` each belongs to
            (int [c]). The head then also learns from them directly, each caption finding its item's OLD
            vector among the batch's (InfoNCE), beside the distillation: the supervision stage 2 has on its pairs.

    Returns ``(adapter, record)``: a new ``Adapter`` with the refreshed head (its ``training["refreshes"]``
    extended), or the same adapter where the guard kept the current head; ``record`` holds the scores.
    """
    if items not in QUERY_OF:
        raise XBTError(f"items must be 'image' or 'text', got {items!r}")
    cfg = config if isinstance(config, RefreshConfig) else RefreshConfig.from_kwargs(**(config or {}))
    modality = QUERY_OF[items]
    old = torch.from_numpy(as_vectors(old_vectors, adapter.embed_dim, "the re-embedded items' old vectors"))
    new = torch.from_numpy(as_vectors(new_vectors, adapter.new.embed_dim, "the re-embedded items' new vectors"))
    queries = torch.from_numpy(as_vectors(queries_new, adapter.new.embed_dim, "the query examples' new vectors"))
    val_q = torch.from_numpy(as_vectors(val_queries_new, adapter.new.embed_dim, "the guard's queries"))
    val_t = torch.from_numpy(as_vectors(val_targets_old, adapter.embed_dim, "the guard's right items"))
    if len(val_q) != len(val_t) or len(val_q) < 10:
        raise XBTError(
            f"the guard needs at least 10 labelled queries, one right item each; got {len(val_q)} queries and "
            f"{len(val_t)} items"
        )
    if len(old) != len(new):
        raise XBTError(f"{len(old)} old vectors but {len(new)} new ones; give both vectors of each re-embedded item")
    if item_queries_new is not None:
        caps = torch.from_numpy(as_vectors(item_queries_new, adapter.new.embed_dim, "the items' own queries"))
        given = torch.as_tensor(np.asarray(item_of_query), dtype=torch.int64)
        if len(given) != len(caps) or (len(given) and (given.min() < 0 or given.max() >= len(old))):
            raise XBTError("item_of_query must give, for each of the items' own queries, a row of old_vectors")
    if adapter.from_new_embeddings(queries[:1], modality) is None:
        raise XBTError(
            f"this adapter's {modality} queries do not start from the bare new model's embeddings (LoRA, or fusion "
            "with the old model): only a head on the frozen tower can be refreshed from vectors"
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    row = torch.arange(len(old))  # where each given item sits in the bank (-1: left out of the sample)
    if len(old) > cfg.max_items:
        keep = torch.randperm(len(old), generator=gen)[: cfg.max_items]
        old, new = old[keep], new[keep]
        row = torch.full((len(row),), -1, dtype=torch.int64)
        row[keep] = torch.arange(len(keep))
    n_val_items = round(cfg.val_fraction * len(old))
    if n_val_items < 5 or len(old) - n_val_items < 5 or len(queries) < 5:
        raise XBTError(
            f"a refresh needs at least 5 items on each side of its held-out split and 5 query examples; got "
            f"{len(old)} re-embedded items at val_fraction {cfg.val_fraction} and {len(queries)} queries: backfill "
            "further first"
        )
    items_order = torch.randperm(len(old), generator=gen)
    val_items, train_items = items_order[:n_val_items], items_order[n_val_items:]
    trained_on = 0  # guard queries that are one of the captions trained on with their item (texts repeat)
    if item_queries_new is not None:
        owner = row[given]
        in_train = torch.isin(owner, train_items)  # a held-out (or unsampled) item's captions are never trained on
        if in_train.any():
            seen = _among(val_q, caps[in_train])
            trained_on = int(seen.sum())
            val_q, val_t = val_q[~seen], val_t[~seen]
            if len(val_q) < 10:
                raise XBTError(
                    f"only {len(val_q)} of the guard's labelled queries are not among the items' own queries the "
                    "refresh trains on; give guard pairs whose captions differ from the re-embedded items'"
                )
    gallery = torch.cat([val_t, old[val_items]])  # each query's right item among held-out re-embedded items
    right = torch.arange(len(val_q))

    def log_ranks(head) -> torch.Tensor:
        with torch.no_grad():
            return torch.log(target_ranks(head.in_chunks(val_q), gallery, right))

    current = adapter.heads[modality]
    states: list[tuple[torch.Tensor, dict]] = []
    teacher_t = 1.0 / float(adapter.new.logit_scale)
    s2 = dataclasses.replace(
        Stage2Config(),
        text_epochs=cfg.epochs,
        text_lr=cfg.lr,
        text_batch_size=cfg.batch_size,
        distill_temperature=cfg.temperature,
        text_anchor_weight=cfg.anchor_weight,
        guard=False,
        seed=cfg.seed,
    )
    distill_text_head(
        current,
        queries,
        new[train_items],
        old[train_items],
        teacher_t,
        s2,
        verbose=verbose,
        on_state=lambda h: states.append((log_ranks(h), copy.deepcopy(h.state_dict()))),
    )
    if item_queries_new is not None:
        states += _supervised(current, caps[in_train], old, owner[in_train], cfg, log_ranks)
    base = states[0][0]  # the distillation's first state is the current head
    choice = pick_and_confirm(base, [logs for logs, _ in states[1:]], seed=cfg.seed + 2)
    best, n_states, bar = choice["picked"], len(states) - 1, choice["clear_gain_bar"]
    record = {
        "items": items,
        "query_modality": modality,
        "n_items": len(old),
        "n_queries": len(queries),
        "held_out": {"items": n_val_items, "labelled_queries": len(val_q), "dropped_as_trained_on": trained_on},
        "measure": "labelled queries search their right item's OLD vector among the held-out items' OLD vectors",
        "current_geo_mean_rank": math.exp(float(base.mean())),
        "epochs_geo_mean_rank": [math.exp(float(logs.mean())) for logs, _ in states[1:]],
        "supervised_epochs": cfg.epochs if item_queries_new is not None else 0,
        # method.guard.pick_and_confirm: gains on the picking half, the bar, the confirmation, right items first
        **{k: v for k, v in choice.items() if k not in ("chosen", "picked")},
        "config": cfg.to_dict(),
    }
    if choice["chosen"] is None:
        record["kept"] = (
            f"current head (no refreshed state gains more than {bar:.2f} standard errors in log rank while "
            "putting as many right items first)"
            if best is None
            else f"current head (candidate {best + 1} of {n_states} cleared the bar on the picking half but not "
            "one standard error, with as many right items first, on the confirming half)"
        )
        return adapter, record
    record["kept"] = f"refreshed head (candidate {best + 1} of {n_states})"
    head = copy.deepcopy(current)
    head.load_state_dict(states[best + 1][1])
    heads = {m: (head if m == modality else h) for m, h in adapter.heads.items()}
    training = {**adapter.training, "refreshes": [*adapter.training.get("refreshes", []), record]}
    refreshed = Adapter(
        adapter.new,
        heads=heads,
        method=adapter.method,
        old=adapter.old_ref,
        training=training,
        lora=adapter.lora,
        lora_modalities=adapter.lora_modalities,
        new_ref=adapter.new_ref,
    )
    return refreshed, record


def _among(queries: torch.Tensor, trained: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """bool [n]: which ``queries`` (float32 [n, d] unit rows) equal one of ``trained`` ([m, d]): the same text."""
    out = torch.zeros(len(queries), dtype=torch.bool)
    for s in range(0, len(trained), chunk):
        out |= (queries @ trained[s : s + chunk].T).max(1).values > 1.0 - 1e-5
    return out


def _supervised(current, caps: torch.Tensor, old: torch.Tensor, owner: torch.Tensor, cfg: RefreshConfig, log_ranks):
    """States ``[(held-out log ranks, state_dict)]`` of the head trained on the items' own queries, per epoch.

    Each query (a caption, NEW vector) must find its item's OLD vector among the batch's items (multi-positive
    InfoNCE at ``cfg.temperature``), the head kept near the current one (``anchor_weight`` x cosine gap).
    """
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    head = copy.deepcopy(current).train().requires_grad_(True)
    anchors = current.eval().in_chunks(caps)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-4)
    out = []
    for _ in range(cfg.epochs):
        head.train()
        for b in torch.randperm(len(caps), generator=gen).split(cfg.batch_size):
            items, slot = torch.unique(owner[b], return_inverse=True)
            positive = slot[:, None] == torch.arange(len(items))[None, :]
            z = head(caps[b])
            loss = multi_positive_nce(z, old[items], positive, cfg.temperature)
            loss = loss + cfg.anchor_weight * cosine_gap(z, anchors[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        head.eval()
        out.append((log_ranks(head), copy.deepcopy(head.state_dict())))
    return out
