"""``xbt gallery build | backfill | search | upgrade | refresh | rollback | cutover``: a gallery in migration from the
line (``upgrade`` and the Ray engine of ``backfill`` live in ``cli.migration``).

Each action's ``description`` (``xbt gallery ACTION --help``) says what it does and writes; every input is checked
before a model is loaded. ``search`` shows what each hit is and marks ``✓`` the right answers the gallery knows:
the toy test split's own (``--toy``), or those of the ``--pairs`` of its own items given at build
(``known_hits.json``). ``register`` fills in the ``xbt gallery`` parser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapters.config import ModelRef
from ..adapters.registry import load_adapter
from ..cluster.engine import open_lance_gallery, rollback_table
from ..core.errors import XBTError
from ..data.sources import LazyImages
from ..gallery import MERGES, ScoreCalibration, fit_gallery_calibration
from ..gallery.backfill import BackfillJob, cutover, open_gallery, read_manifest, rollback
from ..gallery.folder import KNOWN_HITS_FILE, glyphs, header_lines, read_known_hits, result_lines, write_known_hits
from ..gallery.mixed import MixedGallery, read_meta, read_old_vectors
from ..gallery.pair_vectors import known_hits, layout_verdict, load_pairs, pair_vectors, query_key
from ..gallery.planner import PLANS, DisagreementModel, plan_order
from ..models.embedding import embed_images, embed_texts
from ..toy.splits import test_split
from ..vectordb.registry import STORES
from .common import items_spec, load_items, load_model, new_from_adapter_config
from .migration import check_engine, cutover_table, engine_flags, lance_dir, ray_backfill, register_action


def register(p: argparse.ArgumentParser) -> None:
    """Fill in the ``xbt gallery`` parser that ``xbt.cli`` made with its one-line help."""
    p.description = (
        "Build a gallery with the OLD model, backfill it with the NEW one in planned order, and search the mixed "
        "gallery through an adapter (calibrated merge of both parts); roll the backfill back, or cut over to the "
        "new vectors once it is complete. Each ACTION writes into the --gallery folder (xbt gallery ACTION --help)."
    )
    gsub = p.add_subparsers(dest="gallery_command", metavar="ACTION", required=True)

    def common(q) -> None:
        q.add_argument("--gallery", required=True, metavar="DIR", help=GALLERY_HELP)
        q.add_argument("--adapter", required=True, metavar="FOLDER_OR_REPO", help="adapter folder or Hub repo")
        q.add_argument("--new", default=None, metavar="MODEL", help="new model (default: the adapter's config's)")
        q.add_argument("--new-pretrained", default=None, metavar="TAG", help="open_clip pretrained tag of --new")
        q.add_argument("--device", default=None, metavar="DEVICE", help="torch device: cpu, cuda, cuda:1, mps")
        q.add_argument("--quiet", action="store_true", help="no progress bars")

    b = gsub.add_parser(
        "build",
        help="embed the items with the OLD model into a gallery folder",
        description="Embed the items (--texts, --images or --toy) with the OLD model into --gallery: writes "
        "gallery.json (models, item source, score calibration) and old.safetensors (old vectors, item content "
        "hashes); with --pairs that hold some of the gallery's own items, also known_hits.json (the right answers "
        "search marks ✓). A folder whose backfill has started is rebuilt only from the same items and models.",
    )
    common(b)
    b.add_argument("--old", required=True, metavar="MODEL", help="the OLD model (toy name, open_clip name, folder)")
    b.add_argument("--old-pretrained", default=None, metavar="TAG", help="open_clip pretrained tag of --old")
    b.add_argument("--texts", default=None, metavar="FILE", help="caption gallery: UTF-8 file, one caption a line")
    b.add_argument("--images", default=None, metavar="DIR", help="image gallery: a folder of image files")
    b.add_argument("--toy", choices=("images", "captions"), default=None, help="the toy test split's images/captions")
    b.add_argument(
        "--pairs",
        default=None,
        metavar="DIR",
        help="save_to_disk image-caption pairs to fit the score calibration on: one row per caption, all of an "
        "image's captions (COCO's five); pairs of the gallery's own items also record known right answers",
    )
    b.add_argument("--store", choices=STORES, default="faiss", help="vector store searched (default faiss)")
    b.add_argument(
        "--old-queries",
        choices=("auto", "adapter", "old-model"),
        default="auto",
        help="what searches the old part: auto (default) takes the adapter's queries unless its verdict is 'not "
        "backward compatible', then the OLD model's own (one old-model encode per query); adapter forces it (warns)",
    )
    b.set_defaults(func=_build)

    f = gsub.add_parser(
        "backfill",
        help="re-embed with the NEW model up to a budget, in planned order (resumable)",
        description="Re-embed the gallery's items with the adapter's NEW model up to --budget, in --plan order, "
        "into DIR/backfill/ (verified batch files and manifest.json); an interrupted run resumes where it stopped.",
    )
    common(f)
    f.add_argument("--budget", default="1.0", help="fraction in [0, 1] (with a dot) or item count (default 1.0)")
    f.add_argument("--plan", choices=PLANS, default="random", help="order of a new backfill (default random)")
    f.add_argument("--pairs", default=None, metavar="DIR", help="save_to_disk pairs (--plan uncertainty/spread)")
    f.add_argument("--batch-size", type=int, default=256, metavar="N", help="items per batch file (default 256)")
    f.add_argument("--repair", action="store_true", help="re-embed committed batch files that fail their checksum")
    engine_flags(f)
    f.set_defaults(func=_backfill)

    s = gsub.add_parser(
        "search",
        help="search the mixed gallery through an adapter",
        description="Search the gallery with text (--query, image galleries) or image queries (--query-image, "
        "caption galleries) through the adapter, old and new parts merged; prints each hit's rank, id, space, "
        "score and what it is, ✓ on the right answers the gallery knows. Writes nothing.",
    )
    common(s)
    s.add_argument("--query", action="append", default=[], help="a text query (image galleries); repeatable")
    s.add_argument("--query-image", action="append", default=[], metavar="FILE", help="an image query; repeatable")
    s.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    s.add_argument("--merge", choices=MERGES, default="calibrated", help="how the parts merge (default calibrated)")
    s.add_argument("--store", choices=STORES, default=None, help="override the gallery's store (lancedb: the Ray's)")
    s.add_argument("--store-path", default=None, metavar="DIR", help="the LanceDB folder (default GALLERY/lancedb)")
    s.add_argument("--explain", action="store_true", help="first say what each part is searched with, and why")
    s.set_defaults(func=_search)

    register_action(gsub)  # upgrade: the forward map's way, in a module of its own
    for name, fn, text, what in (
        ("rollback", _rollback, "set the backfill aside: all items searched with old vectors again", ROLLBACK),
        ("cutover", _cutover, "after a full backfill: search the new vectors only (no rollback after)", CUTOVER),
    ):
        r = gsub.add_parser(name, help=text, description=what)
        r.add_argument("--gallery", required=True, metavar="DIR", help=GALLERY_HELP)
        r.set_defaults(func=fn)


GALLERY_HELP = "the gallery folder (xbt gallery build writes it)"
ROLLBACK = (
    "Set the gallery's backfill aside (DIR/backfill is renamed backfill.rolled-back-<time>): every item is searched "
    "with its old vector again. Refused after cutover; says so when there is nothing to roll back."
)
CUT_ALREADY = "was already cut over; nothing was done"
CUTOVER = (
    "After a full backfill, mark it cut over (in DIR/backfill/manifest.json; a Ray backfill's LanceDB table drops its "
    "old column): searches use the new vectors only, and rollback is refused from then on. Refused before every "
    "item is backfilled."
)


def _rollback(args) -> int:
    table = (lance_dir(args) / "plan.json").exists()  # a Ray backfill: its table goes back to before it
    if table:
        version = rollback_table(lance_dir(args))
        print(f"rollback: the LanceDB table {lance_dir(args)} restored to version {version} (before its backfill)")
    aside = rollback(args.gallery)
    if aside is not None:
        print(f"rollback: set the backfill of {args.gallery} aside in {aside}; every item is searched as old again")
    elif not table:
        print(f"rollback: {args.gallery} has no backfill to roll back; nothing was done")
    return 0


def _cutover(args) -> int:
    done = cutover_table(args) if (lance_dir(args) / "plan.json").exists() else cutover(args.gallery)  # Ray's or not
    print(f"cutover: {args.gallery} {'now searches its new vectors only' if done else CUT_ALREADY}")
    return 0


def _check_device(device: str | None) -> None:
    """Refuse a ``--device`` torch does not know, or one this machine lacks, before any model is loaded."""
    try:
        torch.device(device or "cpu")
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        why = "not a torch device" if "device string" in str(exc) else "this machine has no such device (or no driver)"
        raise XBTError(f"--device {device}: {why}; use cpu, cuda, cuda:1 or mps (or leave it out)") from None


def _adapter(args, old=None):
    new = (
        load_model(args.new, args.new_pretrained, args.device)
        if args.new
        else new_from_adapter_config(args.adapter, args.device)
    )
    return load_adapter(args.adapter, new, old=old)


def _earlier_build(folder: str, spec: dict[str, Any]) -> tuple[dict | None, dict | None]:
    """``(gallery.json, backfill manifest)`` of an earlier build of the same items in ``folder`` (``None``s: none);
    refused when the folder's backfill has started for other items, or cannot be compared."""
    if Path(folder).exists() and not Path(folder).is_dir():
        raise XBTError(f"--gallery {folder} is a file; give a folder (new, or one xbt gallery build wrote)")
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
    _check_device(args.device)
    meta, manifest = _earlier_build(args.gallery, spec)
    pairs = load_pairs(args.pairs) if args.pairs else None
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
    force = {"auto": None, "adapter": "adapter", "old-model": "old model"}[args.old_queries]
    v, ids = pair_vectors(adapter, old, pairs) if pairs is not None else (None, None)
    judged = layout_verdict(v, ids, gallery.query_modality) if pairs is not None else None  # the gallery's layout
    print(f"the old part is searched with {gallery.use_old_queries(adapter, force, judged)}")
    hits = None
    if pairs is not None:
        gallery.calibration = fit_gallery_calibration(gallery, adapter, v, ids, verbose=not args.quiet)
        hits = known_hits(gallery.item_keys, modality, *pairs)
    elif meta is not None and meta.get("old_model", {}).get("fingerprint") == gallery.old_ref.fingerprint:
        gallery.calibration = ScoreCalibration.from_dict(meta["calibration"])
        print("no --pairs: kept the calibration recorded for these items (give --pairs to fit it anew)")
    else:
        print("no --pairs: the merge uses raw cosines until a calibration is fitted (give --pairs)")
    out = gallery.save(args.gallery)
    if hits:
        write_known_hits(out, gallery.item_keys, hits, f"--pairs {args.pairs}")
        print(f"recorded the right answers of {len(hits)} --pairs queries whose items are here (search marks them ✓)")
    elif meta is None:  # other items than an earlier build's: its right answers are not these items'
        (out / KNOWN_HITS_FILE).unlink(missing_ok=True)
    print(f"built {gallery!r} in {out} (calibration: {gallery.calibration.summary()})")
    return 0


def _budget(text: str) -> float | int:
    try:
        budget = float(text) if "." in text else int(text)
    except ValueError:
        raise XBTError(f"--budget must be a fraction like 0.25 or a count like 1000, got {text!r}") from None
    if budget < 0 or (isinstance(budget, float) and budget > 1):
        raise XBTError(f"--budget {text}: give a fraction in [0, 1] (with a dot) or a count >= 0 of items")
    return budget


def _backfill(args) -> int:
    budget = _budget(args.budget)
    if args.batch_size < 1:
        raise XBTError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_engine(args)
    _check_device(args.device)
    gallery = MixedGallery.load(args.gallery)
    modality, items = load_items(gallery.items)
    fresh = read_manifest(args.gallery) is None and not (lance_dir(args) / "plan.json").exists()
    pairs = load_pairs(args.pairs) if args.pairs and fresh and args.plan in ("uncertainty", "spread") else None
    if fresh and pairs is None and args.plan in ("uncertainty", "spread"):
        raise XBTError(f"--plan {args.plan} learns the adapter's disagreement from pairs: give --pairs DIR")
    adapter = _adapter(args)
    gallery.check_adapter(adapter)
    order = None
    if fresh:
        model = None
        if pairs is not None:
            old = load_model(gallery.old_ref.name, gallery.old_ref.pretrained, args.device, gallery.old_ref.revision)
            v, _ = pair_vectors(adapter, old, pairs)
            key = "img" if modality == "image" else "txt"
            model = DisagreementModel.fit(v[f"old_{key}"], v[f"ad_{key}"])
        order = plan_order(gallery.store.vectors("old", np.arange(gallery.size)), args.plan, model=model)
    if args.engine == "ray":
        return ray_backfill(args, adapter.new, items, order, budget)
    job = BackfillJob(args.gallery, adapter.new, items, order=order, batch_size=args.batch_size, plan=args.plan)
    stats = job.run(budget, repair=args.repair, verbose=not args.quiet)
    print(
        f"backfill: {stats['done']} of {gallery.size} items in the new space (this run: {stats['embedded']} embedded, "
        f"{stats['adopted']} adopted from an interrupted run, {stats['repaired']} repaired)"
    )
    return 0


# ---------------------------------------------------------------------- search: what each hit is, and ✓


WIDTH = 80  # the terminal the search output fits


def _what(gallery: MixedGallery) -> tuple[Any, str]:
    """``(i -> (what item i is, its style for result_lines), a header line saying how items are shown)``."""
    spec = gallery.items
    if spec.get("kind") == "images" and spec.get("files"):
        files = [Path(f) for f in spec["files"]]
        return (lambda i: (files[i].name, "path")), f"items: image files in {files[0].parent}"
    if spec.get("kind") == "toy" and spec.get("what") == "images":
        caps = test_split()[1]
        return (lambda i: (caps[i][0], "quote")), "items: the toy test split's images, each shown by its first caption"
    if gallery.modality == "text":
        try:
            texts = load_items(spec)[1]
        except XBTError as exc:
            return (lambda i: (f"caption {i}", "plain")), f"items: captions, shown by id ({exc})"
        return (lambda i: (texts[i], "quote")), "items: captions"
    return (lambda i: (f"image {i}", "plain")), "items: images, shown by id (the gallery records no files for them)"


def _truth(gallery: MixedGallery, folder: str) -> tuple[dict[str, list[int]], str]:
    """``(query_key -> the items that answer it, where that comes from or why there is none)``."""
    hits, source = read_known_hits(folder, gallery.item_keys)
    if gallery.items.get("kind") == "toy" and gallery.item_keys is not None:  # the test split's own pairs
        images, caps = test_split()
        pairs = [(image, caption) for image, cs in zip(images, caps) for caption in cs]
        hits = {**hits, **known_hits(gallery.item_keys, gallery.modality, *zip(*pairs))}
        source = "the toy test split"
    return hits, source


def _print_results(gallery: MixedGallery, labels, queries, scores, ids, folder: str) -> None:
    """A header (the gallery, how items are shown, where right answers come from), then each query's hits."""
    what, items_line = _what(gallery)
    truth, source = _truth(gallery, folder)
    mark, dots = glyphs(sys.stdout.encoding)
    print("\n".join(header_lines(repr(gallery), items_line, bool(truth), source, mark, dots, WIDTH)))
    in_new = gallery.in_new
    for label, query, row_s, row_i in zip(labels, queries, scores, ids):
        known = set(truth.get(query_key(query, gallery.query_modality), ())) if truth else None
        print("\n" + "\n".join(result_lines(label, row_s, row_i, in_new, what, known, mark, dots, WIDTH)))


def _query_images(paths: list[str]) -> list:
    """The ``--query-image`` files as RGB images, each read now (a bad one refused before any model is loaded)."""
    try:
        return list(LazyImages(paths))
    except XBTError as exc:
        raise XBTError(f"--query-image: {str(exc).split('; ')[0]}; give an image file (PNG, JPEG, ...)") from None


def _search(args) -> int:
    if args.k < 1:
        raise XBTError(f"-k must be >= 1, got {args.k}")
    _check_device(args.device)
    if args.store == "lancedb":  # what the Ray engine wrote
        gallery = open_lance_gallery(args.gallery, lance_dir(args))
    else:
        gallery = open_gallery(args.gallery, store=args.store)
    if gallery.query_modality == "text":
        if not args.query or args.query_image:
            raise XBTError("this is an image gallery: give text queries with --query")
        queries, labels = args.query, args.query
    else:
        if not args.query_image or args.query:
            raise XBTError("this is a caption gallery: give image files with --query-image")
        queries, labels = _query_images(args.query_image), args.query_image
    adapter = _adapter(args)
    old = None
    if gallery.old_queries == "old model" and gallery.reads_old_part_queries:
        old = load_model(gallery.old_ref.name, gallery.old_ref.pretrained, args.device, gallery.old_ref.revision)
    if args.explain:
        print("\n".join(explain(gallery)))
    scores, ids = gallery.search_with(adapter, queries, k=args.k, merge=args.merge, old=old)
    _print_results(gallery, labels, queries, scores, ids, args.gallery)
    return 0


def explain(gallery: MixedGallery) -> list[str]:
    """What ``search --explain`` prints: each part's share, what searches it and why, how the parts merge."""
    n_new, fused = int(gallery.in_new.sum()), any(w for _, w in gallery.calibration.fuse)
    also = ", their kept old vectors too (weight in the calibration's 'fuse')" if fused else ""
    old_part = (
        "the OLD model's own queries (one old-model encode per query, besides the new model's)"
        if gallery.old_queries == "old model"
        else "the adapter's queries (the new model mapped into the old space)"
    )
    return [
        f"explain: {gallery.size - n_new} old-space items searched with {old_part}: {gallery.old_queries_reason}",
        f"explain: {n_new} backfilled items searched with the bare new model's queries{also}",
        f"explain: both parts' top hits merged on the score calibration ({gallery.calibration.summary()})",
    ]
