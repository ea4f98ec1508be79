"""The adapter's Hugging Face model card: the metadata the Hub indexes and the text a reader acts on.

``model_card(config, repo_id, license)`` builds a ``huggingface_hub.ModelCard`` from an ``AdapterConfig``
alone; ``save_pretrained`` writes it as ``README.md``. Loading never reads the card back, so a card
written by an older xbt never stands in the way of its folder.

The YAML header follows what adapters on the Hub carry (peft's, open_clip's): ``license``,
``library_name: xbt``, ``base_model`` (the NEW model, only where it has a Hub id), ``pipeline_tag``,
``tags``, ``datasets`` (the attached evaluation's, only where xbt knows its Hub id) and, with an
evaluation attached, a ``model-index`` with one task per retrieval direction. The body: usage, both
models, what stage 2 kept, the results with each direction's margin over the old model and its
noise, what a query-side adapter cannot do, and the citation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data.retrieval import ALIASES
from ..data.sources import HF_REPOS
from .config import AdapterConfig, ModelRef
from .verdict import verdicts

PAPER = "https://arxiv.org/abs/2405.14715"
#: the project's license, the card's default (``model_card(..., license=...)`` overrides it)
LICENSE = "apache-2.0"
#: An adapter outputs embeddings (float32 unit rows in the old model's space) that search an existing
#: index: the Hub's "feature-extraction" task. CLIP's usual "zero-shot-image-classification" would promise
#: a label-scoring widget and pipeline that an xbt adapter does not provide (``library_name: xbt`` has no
#: Hub inference), and it leaves out the text queries that are half of what the adapter maps.
PIPELINE_TAG = "feature-extraction"
#: model-index task per direction: (type, name). The types are the retrieval tasks' ids (as Papers with
#: Code names them); the Hub's "image-to-text" / "text-to-image" are generation tasks, not these. Two
#: types, because the model-index groups results by task type: one shared type filed both directions'
#: metrics under the first direction's task name.
TASKS = {
    "i2t": ("image-to-text-retrieval", "Image-to-text retrieval"),
    "t2i": ("text-to-image-retrieval", "Text-to-image retrieval"),
}
DIRECTION_LABELS = {"i2t": "image→text", "t2i": "text→image"}
#: what one query of each direction is
QUERY_KIND = {"i2t": "image", "t2i": "caption"}
#: a margin within this many standard errors of zero is reported as within the noise (about 95 %, two-sided)
NOISE_SE = 2.0
CITATION = """@article{jang2024xbt,
  title   = {Towards Cross-modal Backward-compatible Representation Learning for Vision-Language Models},
  author  = {Jang, Young Kyun and Lim, Ser-nam},
  journal = {arXiv preprint arXiv:2405.14715},
  year    = {2024},
  url     = {https://arxiv.org/abs/2405.14715}
}"""


def hub_model_id(ref: ModelRef) -> str | None:
    """The Hub repo id of a model reference, when it has one (``hf:org/name``, ``hf-hub:org/name``,
    or an open_clip architecture whose pretrained tag open_clip's own registry hosts on the Hub,
    e.g. ``timm/vit_base_patch32_clip_224.openai``); else ``None``: never a guessed id."""
    name = ref.name
    for prefix in ("hf:", "hf-hub:"):
        if name.startswith(prefix):
            repo = name[len(prefix) :]
            is_repo = repo.count("/") == 1 and not repo.startswith((".", "/", "~")) and not Path(repo).exists()
            return repo if is_repo else None
    if ref.pretrained and ref.backend == "open_clip":
        try:
            import open_clip

            hub = (open_clip.get_pretrained_cfg(name, ref.pretrained) or {}).get("hf_hub")
        except Exception:  # an architecture open_clip does not list
            return None
        return hub.rstrip("/") if hub else None
    return None


def hub_dataset_id(name: str) -> str | None:
    """The Hub dataset id of an evaluation dataset name, where xbt reads it from the Hub itself
    (``load_dataset(name, source="hf")``: Flickr30k, COCO); ``None`` for the toy world, nocaps and
    a user's own data, which have none."""
    return HF_REPOS.get(ALIASES.get(str(name).lower(), ""))


def _load_code(ref: ModelRef) -> str:
    if ref.name.startswith("xbt-toy-"):
        return f"xbt.toy.load_model({ref.name!r})"
    if ref.pretrained:
        return f"xbt.load_clip({ref.name!r}, pretrained={ref.pretrained!r})"
    return f"xbt.load_clip({ref.name!r})"


def _eval_results(evaluation: dict[str, Any]) -> list[EvalResult]:
    """The new->old Recall@K of an attached evaluation as model-index entries (in %), one task per direction."""
    dataset = str(evaluation["dataset"])
    results = []
    for direction, (task_type, task_name) in TASKS.items():
        for k, value in evaluation["new_old"][direction].items():
            results.append(
                EvalResult(
                    task_type=task_type,
                    task_name=f"{task_name}, new queries in the old gallery",
                    dataset_type=hub_dataset_id(dataset) or dataset,
                    dataset_name=f"{dataset} ({evaluation['split']})",
                    dataset_split=str(evaluation["split"]),
                    metric_type=f"recall@{k}",
                    metric_name=f"new→old R@{k} {direction.upper()}",
                    metric_value=round(100 * float(value), 2),
                )
            )
    return results


def _margins(evaluation: dict[str, Any]) -> tuple[int, dict[str, tuple[float, float | None, int | None]]]:
    """(K, direction -> (d, se, n)): new->old minus old->old at R@1 (else the smallest K), in points.

    ``se`` and ``n`` come from the evaluation (``Report.summary`` records them); an evaluation attached by
    an older xbt has the recalls only, so ``se`` and ``n`` are ``None`` there.
    """
    k = 1 if 1 in [int(x) for x in evaluation["ks"]] else min(int(x) for x in evaluation["ks"])
    out = {}
    for d in TASKS:
        stored = (evaluation.get("margin") or {}).get(d, {}).get(str(k))
        if stored:
            out[d] = (100 * stored["delta"], 100 * stored["se"], int(stored["n"]))
        else:
            out[d] = (100 * (evaluation["new_old"][d][str(k)] - evaluation["old_old"][d][str(k)]), None, None)
    return k, out


def _noise(se: float | None, n: int | None) -> str:
    return (
        "noise not recorded (attach the report again)"
        if se is None
        else f"±{se:.2f} at one standard error over {n:,} queries"
    )


def _within_noise(delta: float, se: float | None) -> bool:
    return se is not None and abs(delta) <= NOISE_SE * se


def _verdict(evaluation: dict[str, Any]) -> list[str]:
    """The backward-compatibility verdict (decided by the evaluation, unchanged here) with its margin per
    direction at R@1 and that margin's noise, so a "yes" won by a hair reads as one."""
    k, margins = _margins(evaluation)
    yes = bool(evaluation.get("backward_compatible"))
    noisy = [d for d, (delta, se, _) in margins.items() if _within_noise(delta, se)]
    weakest = min(noisy if yes and noisy else margins, key=lambda d: margins[d][0])
    delta, se, n = margins[weakest]
    verdict = "yes" if yes else "no"
    head = f"Backward compatible (new→old strictly above old→old at every K, both directions): **{verdict}**"
    if yes and _within_noise(delta, se):
        head += (
            f" — but by {delta:+.2f} R@{k} points in {DIRECTION_LABELS[weakest]}, within the noise ({_noise(se, n)})."
        )
    elif yes:
        head += f", by at least {delta:+.2f} R@{k} points ({DIRECTION_LABELS[weakest]}; {_noise(se, n)})."
    else:
        head += "."
    lines = [
        head,
        "",
        f"Margin at R@{k} (new→old − old→old over the same queries, in points; one standard error of the paired "
        f"difference is sqrt((PFR + NFR − Δ²) / n), PFR/NFR the shares of queries that flip to a hit / a miss; "
        f"within the noise: |Δ| at most {NOISE_SE:g} standard errors):",
        "",
    ]
    for d, (delta, se, n) in margins.items():
        if se is None:
            where = _noise(se, n)
        else:
            where = f"±{se:.2f} over {n:,} {QUERY_KIND[d]} queries"
            if _within_noise(delta, se):
                where += ", within the noise"
            elif se > 0:
                where += f", {abs(delta) / se:.1f} standard errors"
        lines.append(f"- {DIRECTION_LABELS[d]}: {delta:+.2f} ({where})")
    return lines


def _eval_table(evaluation: dict[str, Any]) -> list[str]:
    ks = [str(k) for k in evaluation["ks"]]
    head = ["row"] + [f"I2T R@{k}" for k in ks] + [f"T2I R@{k}" for k in ks]
    lines = [
        f"## Evaluation: {evaluation['dataset']} ({evaluation['split']}), {evaluation['n_images']:,} images, "
        f"{evaluation['n_captions']:,} captions",
        "",
        "Recall@K in %.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    rows = [
        ("old→old (the gallery's own model)", evaluation["old_old"]),
        ("new→old (this adapter)", evaluation["new_old"]),
    ]
    if evaluation.get("new_new"):
        rows.append(("new→new (full re-embedding)", evaluation["new_new"]))
    for label, rec in rows:
        lines.append(
            "| " + " | ".join([label] + [f"{100 * rec[d][k]:.2f}" for d in ("i2t", "t2i") for k in ks]) + " |"
        )
    return lines + [""] + _verdict(evaluation)


def _limitations(config: AdapterConfig) -> list[str]:
    """What a query-side adapter cannot do, whatever its numbers."""
    evaluation = config.evaluation
    measured = (
        f"The verdict above was measured on one dataset ({evaluation['dataset']}, {evaluation['split']} split, "
        f"{evaluation['n_images']:,} images); "
        if evaluation
        else "No evaluation is attached to this adapter; "
    )
    lines = [
        "## Limitations",
        "",
        f"- Only the queries change: the gallery keeps the OLD model's vectors, so search cannot separate what "
        f"`{config.old_model.label}` does not separate. The frozen old gallery, not the new model, is the ceiling; "
        "re-embedding the gallery with the new model (new→new) can exceed it, this adapter cannot.",
        "- It needs the old gallery vectors untouched: the same old model weights, preprocessing and normalisation. "
        "A gallery re-embedded, re-quantised or mixed with another model's vectors is not the space it was fitted "
        "to.",
        f"- {measured}other domains, languages and gallery sizes may rank differently. Evaluate on your own "
        "gallery (`xbt.evaluate`) before relying on it.",
    ]
    if config.fusion is not None:
        lines.append("- Query fusion runs the old model on every query, so the old model must stay deployed.")
    return lines


def _sizes(config: AdapterConfig) -> tuple[int | None, int | None]:
    """(corpus texts, image-caption pairs) the adapter was made from; a fusion adapter's include its base's."""
    records = [config.training, (config.fusion or {}).get("base_training") or {}]
    selection = config.training.get("alpha_selection") or {}
    texts = next((r["n_texts"] for r in records if r.get("n_texts")), None)
    pairs = max([r.get("n_pairs") or 0 for r in records] + [selection.get("n_pairs") or 0]) or None
    return texts, pairs


def _metadata(config: AdapterConfig, title: str, license: str) -> ModelCardData:
    """The card's YAML header."""
    new, old = config.new_model, config.old_model
    n_texts, n_pairs = _sizes(config)
    evaluation = config.evaluation
    dataset = hub_dataset_id(evaluation["dataset"]) if evaluation else None
    tags = ["xbt", "clip"]
    tags += ["open_clip"] if "open_clip" in (new.backend, old.backend) else []
    tags += ["backward-compatible", "backward-compatible-training", "retrieval", config.method]
    return ModelCardData(
        license=license,
        library_name="xbt",
        base_model=hub_model_id(new),
        pipeline_tag=PIPELINE_TAG,
        tags=list(dict.fromkeys(tags)),
        datasets=[dataset] if dataset else None,
        new_model=new.label,
        old_model=old.label,
        xbt_method=config.method,
        corpus_texts=n_texts,
        pairs=n_pairs,
        model_name=title if evaluation else None,
        eval_results=_eval_results(evaluation) if evaluation else None,
    )


def model_card(config: AdapterConfig, repo_id: str | None = None, license: str = LICENSE) -> ModelCard:
    """The model card of the adapter ``config`` describes (``repo_id`` names it in the title and code;
    ``license`` is a Hub license id, the project's Apache-2.0 by default)."""
    new, old = config.new_model, config.old_model
    where = repo_id or "path/to/adapter"
    title = repo_id or f"xbt adapter: {new.label} → {old.label}"
    n_texts, n_pairs = _sizes(config)
    data = _metadata(config, title, license)
    load = f"adapter = xbt.load_adapter({where!r}, new=new)"
    if config.kind == "fusion":
        load = (
            f"old = {_load_code(old)}  # fusion runs the old model on every query\n"
            f"adapter = xbt.load_adapter({where!r}, new=new, old=old)"
        )
    bridges = [f"`{hub_model_id(m)}`" if hub_model_id(m) else f"`{m.label}` (no Hub id)" for m in (new, old)]
    lines = [
        f"# {title}",
        "",
        f"An [xbt]({PAPER}) adapter (method `{config.method}`): queries encoded by the NEW model `{new.label}` "
        f"({new.embed_dim}-d) land in the embedding space of the OLD model `{old.label}` ({old.embed_dim}-d), so they "
        "search a gallery embedded by the old model without re-indexing it.",
        "",
        f"It bridges {bridges[0]} (new, queries) to {bridges[1]} (old, gallery); the new model's weights are not in "
        "this repository: load it yourself and pass it in.",
        "",
        "```python",
        "import xbt",
        "",
        f"new = {_load_code(new)}",
        load,
        'queries = adapter.encode_text(["a dog on a beach"])  # float32 [n, d_old], unit rows',
        "```",
        "",
        "## Models and data",
        "",
        "| | model | embedding | weights fingerprint |",
        "|---|---|---|---|",
        f"| new (queries) | `{new.label}` | {new.embed_dim}-d | `{new.fingerprint}` |",
        f"| old (gallery) | `{old.label}` | {old.embed_dim}-d | `{old.fingerprint}` |",
        "",
        f"Stage-1 text corpus: {n_texts if n_texts is not None else '–'} captions; image-caption pairs: "
        f"{n_pairs if n_pairs is not None else '–'}. LoRA on the new model: {'yes' if config.lora else 'no'}.",
    ]
    lines += _kept(config)
    if config.fusion is not None:
        f = config.fusion
        lines += [
            "",
            f"Query fusion: {f['kind'].upper()} of the old model's query and the `{f['base_method']}` adapter's, "
            f"alpha_text={f['alpha_text']}, alpha_image={f['alpha_image']}; the old model runs on every query.",
        ]
    if config.evaluation:
        lines += [""] + _eval_table(config.evaluation)
    lines += [""] + _limitations(config)
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```"]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _kept(config: AdapterConfig) -> list[str]:
    """What stage 2 kept per query path, and how each compares with the old model's own queries."""
    kept = (config.training or {}).get("kept")
    if not kept:
        return []
    lines = [
        "",
        "## What stage 2 kept",
        "",
        "Each query path keeps the state that searched best on held-out pairs, stage 1 included:",
        "",
    ]
    lines += [
        f"- **{path} queries**: {kept[path]['kept']}. {kept[path]['reason']}."
        for path in ("text", "image")
        if path in kept
    ]
    measured = [v for v in verdicts(config.training).values() if v.interval is not None]
    if measured:
        lines += ["", "Backward compatible? Against the old model's own queries on the same held-out pairs:", ""]
        lines += [
            f"- {v.sentence()}"
            + (
                " **Not backward compatible here**: a gallery in migration searches its old part with the old "
                "model's queries for this direction (`MixedGallery.use_old_queries`)."
                if v.compatible is False
                else ""
            )
            for v in measured
        ]
    return lines
