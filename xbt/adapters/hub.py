"""The Hugging Face Hub, with huggingface_hub's own tools: model cards, upload, download.

- ``model_card(config)``: a ``huggingface_hub.ModelCard`` built with ``ModelCardData`` from an
  ``AdapterConfig`` alone: ``library_name: xbt``, tags, ``base_model`` (the new model, when it is a
  Hub model), both models named, the corpus and pair sizes, and - when an evaluation is attached -
  the results table in ``model-index`` form. ``save_pretrained`` writes it as ``README.md``.
- ``push_folder``: uploads a saved adapter folder as it is (``HfApi.create_repo`` +
  ``HfApi.upload_folder``).
- ``resolve``: a local folder as is, or a repo id through ``snapshot_download`` restricted to the
  adapter's own files (JSON, safetensors, the card: nothing pickled, nothing unknown). With
  ``HF_HUB_OFFLINE=1`` a repo already in the Hub cache (``HF_HUB_CACHE``) loads without network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, snapshot_download

from ..core.errors import XBTError
from .config import (
    CARD_NAME,
    CONFIG_NAME,
    HEADS_NAME,
    LEGACY_CONFIG_NAME,
    LEGACY_HEADS_NAME,
    LORA_DIR,
    AdapterConfig,
    ModelRef,
    read_config,
)

#: the files of an adapter folder (format 2); uploads and downloads are limited to these
ADAPTER_FILES = (
    CONFIG_NAME,
    HEADS_NAME,
    CARD_NAME,
    f"{LORA_DIR}/adapter_config.json",
    f"{LORA_DIR}/adapter_model.safetensors",
)
#: what ``resolve`` downloads: the adapter's files, format 1's too
DOWNLOAD_PATTERNS = (*ADAPTER_FILES, LEGACY_CONFIG_NAME, LEGACY_HEADS_NAME)
PAPER = "https://arxiv.org/abs/2405.14715"


def resolve(path_or_repo: str | os.PathLike, revision: str | None = None) -> Path:
    """The local folder of an adapter: ``path_or_repo`` itself, or its Hub snapshot (cache first).

    Raises an ``XBTError`` for a file, a string that is neither a folder nor a repo id, and a repo
    that cannot be fetched (naming the reason: network, token, not in the offline cache).
    """
    local = Path(path_or_repo).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise XBTError(f"{local} is a file; pass the adapter's folder (the one holding {CONFIG_NAME})")
    repo = str(path_or_repo)
    if repo.count("/") != 1 or repo.startswith((".", "/", "~")):
        raise XBTError(f"{repo!r} is neither an existing folder nor a Hub repo id like 'org/name'")
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=list(DOWNLOAD_PATTERNS)))
    except Exception as exc:  # network, auth, missing repo, not cached while offline: say which and what to do
        raise XBTError(
            f"could not fetch adapter {repo!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}); check the id, "
            "your token and network (with HF_HUB_OFFLINE=1 only repos already in the Hub cache load), or pass a "
            "local folder"
        ) from exc


def hub_model_id(ref: ModelRef) -> str | None:
    """The Hub repo id of a model reference, when it has one (``hf:org/name``, ``hf-hub:org/name``,
    or an open_clip architecture whose pretrained tag is hosted on the Hub); else ``None``."""
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


def _load_code(ref: ModelRef) -> str:
    if ref.name.startswith("xbt-toy-"):
        return f"xbt.toy.load_model({ref.name!r})"
    if ref.pretrained:
        return f"xbt.load_clip({ref.name!r}, pretrained={ref.pretrained!r})"
    return f"xbt.load_clip({ref.name!r})"


def _eval_results(evaluation: dict[str, Any], model_name: str) -> list[EvalResult]:
    """The new->old Recall@K of an attached evaluation as model-index entries (in %)."""
    results = []
    for direction, task in (("i2t", "image-to-text retrieval"), ("t2i", "text-to-image retrieval")):
        for k, value in evaluation["new_old"][direction].items():
            results.append(
                EvalResult(
                    task_type="feature-extraction",
                    task_name=f"{task}, new queries in the old gallery",
                    dataset_type=str(evaluation["dataset"]),
                    dataset_name=f"{evaluation['dataset']} ({evaluation['split']})",
                    dataset_split=str(evaluation["split"]),
                    metric_type=f"recall@{k}",
                    metric_name=f"new→old R@{k} {direction.upper()}",
                    metric_value=round(100 * float(value), 2),
                )
            )
    return results


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
    verdict = "yes" if evaluation.get("backward_compatible") else "no"
    return lines + [
        "",
        f"Backward compatible (new→old strictly above old→old at every K, both directions): **{verdict}**.",
    ]


def _sizes(config: AdapterConfig) -> tuple[int | None, int | None]:
    """(corpus texts, image-caption pairs) the adapter was made from; a fusion adapter's include its base's."""
    records = [config.training, (config.fusion or {}).get("base_training") or {}]
    selection = config.training.get("alpha_selection") or {}
    texts = next((r["n_texts"] for r in records if r.get("n_texts")), None)
    pairs = max([r.get("n_pairs") or 0 for r in records] + [selection.get("n_pairs") or 0]) or None
    return texts, pairs


def model_card(config: AdapterConfig, repo_id: str | None = None) -> ModelCard:
    """The model card of the adapter ``config`` describes (``repo_id`` names it in the title and code)."""
    new, old = config.new_model, config.old_model
    where = repo_id or "path/to/adapter"
    title = repo_id or f"xbt adapter: {new.label} → {old.label}"
    n_texts, n_pairs = _sizes(config)
    data = ModelCardData(
        library_name="xbt",
        tags=["xbt", "clip", "backward-compatible-training", "retrieval", config.method],
        base_model=hub_model_id(new),
        new_model=new.label,
        old_model=old.label,
        xbt_method=config.method,
        corpus_texts=n_texts,
        pairs=n_pairs,
        model_name=title if config.evaluation else None,
        eval_results=_eval_results(config.evaluation, title) if config.evaluation else None,
    )
    load = f"adapter = xbt.load_adapter({where!r}, new=new)"
    if config.kind == "fusion":
        load = (
            f"old = {_load_code(old)}  # fusion runs the old model on every query\n"
            f"adapter = xbt.load_adapter({where!r}, new=new, old=old)"
        )
    lines = [
        f"# {title}",
        "",
        f"An [xbt]({PAPER}) adapter (method `{config.method}`): queries encoded by the NEW model `{new.label}` "
        f"({new.embed_dim}-d) land in the embedding space of the OLD model `{old.label}` ({old.embed_dim}-d), so they "
        "search a gallery embedded by the old model without re-indexing it.",
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
    kept = (config.training or {}).get("kept")
    if kept:
        lines += [
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
        versus = (config.training.get("metrics", {}).get("stage2") or {}).get("versus_old_model") or {}
        checks = [versus[p] for p in ("text", "image") if isinstance(versus.get(p), dict)]
        if checks:
            lines += [
                "",
                "Against the old model's own queries on the same held-out pairs (backward compatibility):",
                "",
            ]
            lines += [
                f"- {c['summary']}" + (" **Not backward compatible here.**" if c.get("verdict") == "worse" else "")
                for c in checks
            ]
    if config.fusion is not None:
        f = config.fusion
        lines += [
            "",
            f"Query fusion: {f['kind'].upper()} of the old model's query and the `{f['base_method']}` adapter's, "
            f"alpha_text={f['alpha_text']}, alpha_image={f['alpha_image']}; the old model runs on every query.",
        ]
    if config.evaluation:
        lines += [""] + _eval_table(config.evaluation)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload an adapter folder written by ``save_pretrained`` to the Hub as it is; returns the repo URL.

    The folder must be a format-2 adapter (config and card present); anything else in it is left
    out of the upload.
    """
    folder = Path(folder)
    config = read_config(folder)  # refuses anything that is not an adapter, or from a newer xbt
    if not (folder / CONFIG_NAME).is_file() or not (folder / CARD_NAME).is_file():
        raise XBTError(
            f"{folder} was saved by an older xbt (no {CONFIG_NAME} and {CARD_NAME}); load it and save it again with "
            "this one (xbt.load_adapter(folder, new=...).save_pretrained(new_folder)), then push the new folder"
        )
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=list(ADAPTER_FILES),
        commit_message=commit_message or f"xbt adapter ({config.method})",
    )
    return str(url)
