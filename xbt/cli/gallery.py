"""``xbt gallery build | backfill | search | rollback | cutover``: a gallery in migration from the command line.

- ``build``: embed the items (a caption file, an image folder, or the toy test split) with the
  OLD model into a gallery folder; with ``--pairs`` (a ``save_to_disk`` dataset of image–caption
  pairs) the score calibration is fitted for the adapter and recorded. Built again into the same
  folder: a gallery whose backfill has started (``backfill/manifest.json``) is rebuilt only from the
  same items with the same old and new models, and keeps its backfill; any other rebuild there is
  refused (roll the backfill back first, or build into a new folder), since the new vectors would
  stay on the wrong items. A rebuild of the same items with the same old model keeps the recorded
  calibration unless ``--pairs`` fits a new one.
- ``backfill``: re-embed with the adapter's NEW model up to ``--budget`` (fraction or count), in
  ``--plan`` order (``uncertainty``/``spread`` fit their disagreement model on ``--pairs``);
  resumable, one job at a time (``xbt.backfill``).
- ``search``: text (``--query``) or image (``--query-image``) queries through the adapter against
  the mixed gallery, merged on the calibrated score.
- ``rollback`` / ``cutover``: back to all-old, or drop the old part once everything is backfilled
  (each says when there was nothing to do; a folder that is not a gallery is refused).

``register(sub)`` adds the group to the ``xbt`` parser.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapters.config import ModelRef
from ..adapters.registry import load_adapter
from ..core.errors import XBTError
from ..data.sources import LazyImages
from ..gallery.backfill import BackfillJob, cutover, open_gallery, read_manifest, rollback
from ..gallery.calibration import MERGES, ScoreCalibration, calibration_set, fit_calibration
from ..gallery.mixed import STORES, MixedGallery, read_meta, read_old_vectors
from ..gallery.pair_vectors import pair_vectors
from ..gallery.planner import PLANS, DisagreementModel, plan_order
from ..models.embedding import embed_images, embed_texts
from ..toy.splits import test_split
from .common import load_model, new_from_adapter_config

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def items_spec(args: argparse.Namespace) -> dict[str, Any]:
    """Where the items come from, as recorded in ``gallery.json``."""
    given = [x for x in (args.texts, args.images, args.toy) if x]
    if len(given) != 1:
        raise XBTError("give exactly one of --texts FILE, --images DIR or --toy images|captions")
    if args.texts:
        return {"kind": "texts", "file": str(Path(args.texts).resolve())}
    if args.images:
        folder = Path(args.images).resolve()
        files = (
            sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        )
        if not files:
            raise XBTError(f"--images {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
        return {"kind": "images", "files": files}
    return {"kind": "toy", "what": args.toy}


def load_items(spec: dict[str, Any]) -> tuple[str, Any]:
    """``(modality, items)`` of a recorded item source: texts, or lazily opened images."""
    if spec.get("kind") == "texts":
        path = Path(spec["file"])
        if not path.is_file():
            raise XBTError(
                f"the gallery's caption file {path} is gone; the backfill needs the items it was built from"
            )
        return "text", [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if spec.get("kind") == "images":
        return "image", LazyImages(spec["files"])
    if spec.get("kind") == "toy":
        images, caps = test_split()
        return ("image", images) if spec["what"] == "images" else ("text", [c for cs in caps for c in cs])
    raise XBTError(f"unknown item source {spec!r} in gallery.json")


def _pairs(path: str | None) -> tuple[list, list[str]] | None:
    if not path:
        return None
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except FileNotFoundError as exc:
        raise XBTError(f"--pairs {path} is not a folder written by datasets.Dataset.save_to_disk ({exc})") from exc
    if not {"image", "caption"} <= set(ds.column_names):
        raise XBTError(f"--pairs {path} needs 'image' and 'caption' columns, has {ds.column_names}")
    return [im.convert("RGB") for im in ds["image"]], list(ds["caption"])


def register(sub) -> None:
    """Add ``xbt gallery`` and its subcommands to the ``xbt`` subparsers ``sub``."""
    p = sub.add_parser(
        "gallery",
        help="a gallery in migration: build, backfill (resumable), search with an adapter",
        description="Build a gallery with the OLD model, backfill it with the NEW one in planned order, "
        "and search the mixed gallery through an adapter (calibrated merge of both parts).",
    )
    gsub = p.add_subparsers(dest="gallery_command", metavar="ACTION", required=True)

    def common(q, adapter_required: bool = True) -> None:
        q.add_argument("--gallery", required=True, help="the gallery folder")
        q.add_argument("--adapter", required=adapter_required, help="adapter folder or Hub repo (xbt.load_adapter)")
        q.add_argument("--new", default=None, help="new model (default: the one the adapter's config names)")
        q.add_argument("--new-pretrained", default=None)
        q.add_argument("--device", default=None)
        q.add_argument("--quiet", action="store_true", help="no progress bars")

    b = gsub.add_parser("build", help="embed the items with the OLD model into a gallery folder")
    common(b)
    b.add_argument(
        "--old", required=True, help="the OLD model the gallery is embedded with (toy name, open_clip name, folder)"
    )
    b.add_argument("--old-pretrained", default=None)
    b.add_argument("--texts", default=None, help="caption gallery: UTF-8 file, one caption per line")
    b.add_argument("--images", default=None, help="image gallery: a folder of image files (sorted by name)")
    b.add_argument(
        "--toy", choices=("images", "captions"), default=None, help="the toy test split's images or captions"
    )
    b.add_argument(
        "--pairs",
        default=None,
        help="save_to_disk image-caption pairs to fit the score calibration on: "
        "one row per caption, all of an image's captions (COCO's five), as the gallery holds them",
    )
    b.add_argument("--store", choices=STORES, default="faiss", help="vector store searched (default faiss)")
    b.set_defaults(func=_build)

    f = gsub.add_parser("backfill", help="re-embed with the NEW model up to a budget, in planned order (resumable)")
    common(f)
    f.add_argument("--budget", default="1.0", help="fraction in [0, 1] (with a dot) or item count (default 1.0)")
    f.add_argument("--plan", choices=PLANS, default="random", help="order of a new backfill (default random)")
    f.add_argument("--pairs", default=None, help="save_to_disk pairs (needed by --plan uncertainty/spread)")
    f.add_argument("--batch-size", type=int, default=256)
    f.add_argument("--repair", action="store_true", help="re-embed committed batch files that fail their checksum")
    f.set_defaults(func=_backfill)

    s = gsub.add_parser("search", help="search the mixed gallery through an adapter")
    common(s)
    s.add_argument("--query", action="append", default=[], help="a text query (image galleries); repeat for several")
    s.add_argument("--query-image", action="append", default=[], help="an image file query (caption galleries)")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--merge", choices=MERGES, default="calibrated")
    s.add_argument("--store", choices=STORES, default=None, help="override the gallery's store")
    s.set_defaults(func=_search)

    for name, fn, text in (
        ("rollback", _rollback, "set the backfill aside: all items searched with old vectors again"),
        ("cutover", _cutover, "after a full backfill: search the new vectors only (no rollback after)"),
    ):
        r = gsub.add_parser(name, help=text)
        r.add_argument("--gallery", required=True)
        r.set_defaults(func=fn)


def _rollback(args) -> int:
    aside = rollback(args.gallery)
    if aside is None:
        print(f"rollback: {args.gallery} has no backfill to roll back; nothing was done")
    else:
        print(f"rollback: set the backfill of {args.gallery} aside in {aside}; every item is searched as old again")
    return 0


def _cutover(args) -> int:
    if cutover(args.gallery):
        print(f"cutover: {args.gallery} now searches its new vectors only")
    else:
        print(f"cutover: {args.gallery} was already cut over; nothing was done")
    return 0


def _adapter(args, old=None):
    new = (
        load_model(args.new, args.new_pretrained, args.device)
        if args.new
        else new_from_adapter_config(args.adapter, args.device)
    )
    return load_adapter(args.adapter, new, old=old)


def _earlier_build(folder: str, spec: dict[str, Any]) -> tuple[dict | None, dict | None]:
    """``(gallery.json, backfill manifest)`` of an earlier build in ``folder`` of the same items (``None``s: none).

    Refused when the folder's backfill has started for other items, or cannot be compared.
    """
    manifest = read_manifest(folder)  # an unreadable one names rollback as the fix
    if manifest is None:
        try:
            meta = read_meta(folder)
        except XBTError:  # no gallery there yet, or a broken one without a backfill: built anew
            return None, None
        return (meta if meta.get("items") == spec else None), None
    meta = read_meta(folder)
    if meta.get("items") != spec:
        raise _rebuild_refused(folder, manifest, "other items than those given")
    return meta, manifest


def _rebuild_refused(folder: str, manifest: dict, why: str) -> XBTError:
    done = sum(e["count"] for e in manifest["batches"])
    return XBTError(
        f"{folder} has a backfill in progress ({done} items in the new space) for {why}; building it again "
        f"would leave those new vectors on the wrong items: roll it back first (xbt gallery rollback --gallery "
        f"{folder}) or build into a new folder"
    )


def _build(args) -> int:
    spec = items_spec(args)
    meta, manifest = _earlier_build(args.gallery, spec)
    old = load_model(args.old, args.old_pretrained, args.device)
    adapter = _adapter(args, old)
    modality, items = load_items(spec)
    if manifest is not None:
        if meta.get("old_model", {}).get("fingerprint") != ModelRef.of(old).fingerprint:
            raise _rebuild_refused(
                args.gallery, manifest, f"items embedded by another old model ({meta.get('old_model')})"
            )
        if manifest["new_model"].get("fingerprint") != ModelRef.of(adapter.new).fingerprint:
            raise _rebuild_refused(args.gallery, manifest, f"another new model ({manifest['new_model']['name']!r})")
        if meta.get("size") != len(items):
            raise _rebuild_refused(args.gallery, manifest, f"{meta.get('size')} items, not the {len(items)} given now")
    gallery = MixedGallery(ModelRef.of(old), adapter.new.embed_dim, modality, store=args.store, items=spec)
    gallery.check_adapter(adapter)
    embed = embed_images if modality == "image" else embed_texts
    vectors = embed(old, items, cache=False, verbose=not args.quiet)
    if manifest is not None:
        try:
            stored = read_old_vectors(args.gallery)
        except XBTError:  # a damaged old.safetensors: this rebuild is its fix
            stored = vectors
        if stored.shape != vectors.shape or not torch.allclose(stored, vectors, atol=1e-4):
            raise _rebuild_refused(args.gallery, manifest, "items whose old vectors differ from these (changed files)")
    gallery.add_old(vectors, items=items)
    pairs = _pairs(args.pairs)
    if pairs is not None:
        v, ids = pair_vectors(adapter, old, pairs)
        cal_set = calibration_set(v, ids, modality)
        gallery.calibration = fit_calibration(*cal_set, verbose=not args.quiet)
    elif meta is not None and meta.get("old_model", {}).get("fingerprint") == gallery.old_ref.fingerprint:
        gallery.calibration = ScoreCalibration.from_dict(meta["calibration"])
        print("no --pairs: kept the calibration recorded for these items (give --pairs to fit it anew)")
    else:
        print("no --pairs: the merge uses raw cosines until a calibration is fitted (give --pairs)")
    out = gallery.save(args.gallery)
    print(f"built {gallery!r} in {out} (calibration: {gallery.calibration.summary()})")
    return 0


def _budget(text: str) -> float | int:
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        raise XBTError(f"--budget must be a fraction like 0.25 or a count like 1000, got {text!r}") from None


def _backfill(args) -> int:
    adapter = _adapter(args)
    gallery = MixedGallery.load(args.gallery)
    gallery.check_adapter(adapter)
    modality, items = load_items(gallery.items)
    order = None
    if read_manifest(args.gallery) is None:
        model = None
        if args.plan in ("uncertainty", "spread"):
            pairs = _pairs(args.pairs)
            if pairs is None:
                raise XBTError(f"--plan {args.plan} learns the adapter's disagreement from pairs: give --pairs DIR")
            old = load_model(gallery.old_ref.name, gallery.old_ref.pretrained, args.device, gallery.old_ref.revision)
            v, _ = pair_vectors(adapter, old, pairs)
            key = "img" if modality == "image" else "txt"
            model = DisagreementModel.fit(v[f"old_{key}"], v[f"ad_{key}"])
        order = plan_order(gallery.store.vectors("old", np.arange(gallery.size)), args.plan, model=model)
    job = BackfillJob(args.gallery, adapter.new, items, order=order, batch_size=args.batch_size, plan=args.plan)
    stats = job.run(_budget(args.budget), repair=args.repair, verbose=not args.quiet)
    print(
        f"backfill: {stats['done']} of {gallery.size} items in the new space (this run: {stats['embedded']} embedded, "
        f"{stats['adopted']} adopted from an interrupted run, {stats['repaired']} repaired)"
    )
    return 0


def _search(args) -> int:
    adapter = _adapter(args)
    gallery = open_gallery(args.gallery, store=args.store)
    if gallery.query_modality == "text":
        if not args.query or args.query_image:
            raise XBTError("this is an image gallery: give text queries with --query")
        queries, labels = args.query, args.query
    else:
        if not args.query_image or args.query:
            raise XBTError("this is a caption gallery: give image files with --query-image")
        queries, labels = LazyImages(args.query_image), args.query_image
        queries = [queries[i] for i in range(len(queries))]
    scores, ids = gallery.search_with(adapter, queries, k=args.k, merge=args.merge)
    _, items = load_items(gallery.items)
    in_new = gallery.in_new
    for label, row_s, row_i in zip(labels, scores, ids):
        print(f"\nquery: {label}  ({gallery!r})")
        for rank, (sc, i) in enumerate(zip(row_s, row_i), 1):
            if i < 0:
                continue
            shown = (
                items[i] if gallery.modality == "text" else (gallery.items.get("files") or [f"image {i}"] * (i + 1))[i]
            )
            print(f"{rank:3d}. item {i:6d}  {'new' if in_new[i] else 'old'}  {sc:+.4f}  {shown}")
    return 0
