"""What ``xbt gallery`` does beyond its folder: ``upgrade`` (a forward map over stored vectors) and the Ray engine.

``upgrade`` moves a gallery's stored OLD vectors into the NEW space with a forward map, resumably: the vectors
are a ``.npy`` file read in batches, so a gallery of any size upgrades in bounded memory
(``forward.job.UpgradeJob``). ``backfill --engine ray`` re-embeds on Ray Data into a LanceDB table
(``cluster.RayBackfill``; ``engine_flags`` adds its options, ``ray_backfill`` runs it); ``rollback`` and
``search`` follow the table when the gallery has one (``lance_dir``). ``gallery.register`` calls
``register_action``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..core.errors import XBTError
from ..core.names import LANCE_DIR
from ..forward.job import UpgradeJob
from ..forward.map import MODALITIES, ForwardMap


def register_action(gsub) -> None:
    """Add the ``upgrade`` and ``refresh`` actions to the ``xbt gallery`` sub-parsers."""
    r = gsub.add_parser(
        "refresh",
        help="teach the adapter from the items re-embedded so far (their old and new vectors); guarded",
        description="Refresh the query head of --adapter that searches this gallery from its re-embedded items "
        "(cluster.refresh_adapter): the head learns to rank their OLD vectors as the new model ranks their NEW ones, "
        "for the --queries given (a text file, one caption a line, for an image gallery; a folder of images for a "
        "caption gallery). The --pairs decide (pairs the adapter did not train on): the refreshed adapter is "
        "written to --out only if they find their right items better through it; otherwise nothing is written and "
        "it says so. Reads the LanceDB table of a Ray backfill when the gallery has one, else the folder's own.",
    )
    r.add_argument("--gallery", required=True, metavar="DIR", help="the gallery folder (xbt gallery build)")
    r.add_argument("--adapter", required=True, metavar="DIR", help="the adapter serving the gallery's old part")
    r.add_argument("--queries", required=True, metavar="PATH", help="query examples: texts file or images folder")
    r.add_argument("--pairs", required=True, metavar="DIR", help="the guard's pairs (save_to_disk; not trained on)")
    r.add_argument("--out", required=True, metavar="DIR", help="where the refreshed adapter is saved")
    r.add_argument(
        "--store-path", default=None, metavar="DIR", help=f"the LanceDB folder (default GALLERY/{LANCE_DIR})"
    )
    r.add_argument("--device", default=None, help="torch device of the new model (default cpu)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=_refresh)

    u = gsub.add_parser(
        "upgrade",
        help="move the stored OLD vectors into the NEW space with a forward map (resumable, no image needed)",
        description="Upgrade the OLD vectors in --vectors (a .npy file, float32 [n, d_old], read memory-mapped) "
        "with the forward map in --map (xbt.fit_forward(...).save) into --out: upgraded.npy, states.npy (each "
        "vector's state) and upgrade.json (the map's id, the batches done). An interrupted run resumes where it "
        "stopped; another map or other vectors are refused there.",
    )
    u.add_argument("--vectors", required=True, metavar="FILE.npy", help="the gallery's OLD vectors (numpy.save)")
    u.add_argument("--modality", required=True, choices=MODALITIES, help="what the vectors embed: text or image")
    u.add_argument("--map", required=True, metavar="DIR", help="forward map folder (ForwardMap.save)")
    u.add_argument("--out", required=True, metavar="DIR", help="folder to write the upgraded vectors to")
    u.add_argument("--batch-size", type=int, default=65_536, metavar="N", help="vectors per batch (default 65536)")
    u.add_argument("--quiet", action="store_true", help="no progress bar")
    u.set_defaults(func=_upgrade)


def _upgrade(args: argparse.Namespace) -> int:
    if Path(args.out).is_file():
        raise XBTError(f"--out {args.out} is a file; give a folder (new, or one an earlier upgrade wrote)")
    fmap = ForwardMap.load(args.map)
    result = UpgradeJob(args.out, args.vectors, fmap, args.modality, args.batch_size).run(verbose=not args.quiet)
    rate = result["vectors_per_second"]
    print(
        f"upgraded {result['source']['shape'][0]} {args.modality} vectors with forward map {result['map_id']} into "
        f"{args.out}" + (f" ({rate:,.0f} vectors/s this run)" if rate else " (nothing left to do)")
    )
    return 0


ENGINES = ("local", "ray")


def engine_flags(f: argparse.ArgumentParser) -> None:
    """The backfill's engine options: where it embeds and which store records it."""
    f.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local (default): this process, batch files in DIR/backfill; ray: Ray Data workers (a local Ray, or "
        "the cluster at --address) committing each batch as a version of a LanceDB table",
    )
    f.add_argument("--address", default=None, help="Ray cluster to join (auto, ray://head:10001); --engine ray only")
    f.add_argument("--workers", type=int, default=1, metavar="N", help="embedding actors (--engine ray; default 1)")
    f.add_argument("--gpus-per-worker", type=float, default=0, metavar="G", help="GPUs per actor (--engine ray)")
    f.add_argument("--store", choices=("lancedb",), default=None, help="the ray engine's store (lancedb, its default)")
    f.add_argument(
        "--store-path", default=None, metavar="DIR", help=f"the LanceDB folder (default GALLERY/{LANCE_DIR})"
    )


def lance_dir(args) -> Path:
    """The LanceDB folder of the gallery in ``args`` (``--store-path``, else ``GALLERY/lancedb``)."""
    return Path(getattr(args, "store_path", None) or Path(args.gallery) / LANCE_DIR)


def check_engine(args) -> None:
    """Refuse the engine options that do not apply to the engine chosen, before any model is loaded."""
    if args.engine == "local":
        given = [
            f
            for f, v in (("--address", args.address), ("--store", args.store), ("--store-path", args.store_path))
            if v
        ]
        given += ["--workers"] * (args.workers != 1) + ["--gpus-per-worker"] * bool(args.gpus_per_worker)
        if given:
            raise XBTError(f"{', '.join(given)} apply to --engine ray only; add --engine ray, or leave them out")
        return
    if args.repair:
        raise XBTError("--repair re-embeds damaged batch files of the local engine; the ray engine has none")
    if args.workers < 1 or args.gpus_per_worker < 0:
        raise XBTError(
            f"--workers must be >= 1 and --gpus-per-worker >= 0, got {args.workers}, {args.gpus_per_worker}"
        )


def ray_backfill(args, new, items, order, budget) -> int:
    """``xbt gallery backfill --engine ray``: ``cluster.RayBackfill`` into the gallery's LanceDB table."""
    from ..cluster.engine import RayBackfill

    job = RayBackfill(
        args.gallery,
        new,
        items,
        lance_dir(args),
        order=order,
        batch_size=args.batch_size,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        address=args.address,
    )
    stats = job.run(budget, verbose=not args.quiet)
    rate = f", {stats['items_per_second']:,.1f} items/s" if stats["items_per_second"] else ""
    print(
        f"backfill (ray): {stats['done']} of {len(items)} items in the new space (this run: {stats['embedded']} "
        f"embedded in {stats['batches']} batches{rate}); LanceDB table {lance_dir(args)} at version {stats['version']}"
    )
    return 0


def _refresh(args) -> int:
    from ..adapters.registry import load_adapter
    from ..cluster.engine import open_lance_gallery
    from ..cluster.refresh import QUERY_OF, refresh_adapter
    from ..data.sources import LazyImages
    from ..gallery.backfill import open_gallery
    from ..gallery.pair_vectors import load_pairs
    from ..models.embedding import embed_images, embed_texts
    from .common import load_model, new_from_adapter_config

    if Path(args.out).exists() and any(Path(args.out).iterdir()):
        raise XBTError(f"--out {args.out} is not empty; give a new folder for the refreshed adapter")
    table = lance_dir(args)
    gallery = open_lance_gallery(args.gallery, table) if (table / "plan.json").exists() else open_gallery(args.gallery)
    ids = np.flatnonzero(gallery.in_new)
    queries = Path(args.queries)
    want = "a text file" if gallery.modality == "image" else "a folder of images"
    if (gallery.modality == "image") != queries.is_file():
        raise XBTError(
            f"--queries {queries}: a {gallery.modality} gallery is searched by {QUERY_OF[gallery.modality]} "
            f"queries; give {want}"
        )
    if gallery.modality == "image":
        examples = [line.strip() for line in queries.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        examples = LazyImages(sorted(f for f in queries.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg")))
    pair_images, pair_captions = load_pairs(args.pairs)
    new = new_from_adapter_config(args.adapter, args.device)
    adapter = load_adapter(args.adapter, new)
    gallery.check_adapter(adapter)
    old = load_model(gallery.old_ref.name, gallery.old_ref.pretrained, args.device, gallery.old_ref.revision)
    quiet = args.quiet
    if gallery.modality == "image":  # captions search images: the guard's right items are the pair images
        q = embed_texts(new, examples, verbose=not quiet)
        guard = (embed_texts(new, pair_captions, verbose=not quiet), embed_images(old, pair_images, verbose=not quiet))
    else:
        q = embed_images(new, examples, verbose=not quiet)
        guard = (embed_images(new, pair_images, verbose=not quiet), embed_texts(old, pair_captions, verbose=not quiet))
    old_v, new_v = gallery.store.vectors("old", ids), gallery.store.vectors("new", ids)
    refreshed, record = refresh_adapter(adapter, gallery.modality, old_v, new_v, q, *guard, verbose=not quiet)
    gain = record["gain_and_se"]
    print(
        f"refresh: {len(ids)} re-embedded items, {len(examples)} query examples; held-out geometric-mean rank "
        f"{record['current_geo_mean_rank']:.3f} now, by epoch {[round(x, 3) for x in record['epochs_geo_mean_rank']]}"
    )
    if refreshed is adapter:
        print(f"refresh: kept the {record['kept']}; nothing written (gain and standard error by epoch: {gain})")
        return 0
    refreshed.save_pretrained(args.out)
    print(f"refresh: {record['kept']} saved to {args.out}; serve it with xbt gallery search --adapter {args.out}")
    print(
        "refresh: the gallery's score calibration was fitted for the adapter this one replaces; to fit it for this "
        f"one, build the gallery again from the same items and models with --adapter {args.out} --pairs <pairs> "
        "(a backfill in progress is kept)"
    )
    return 0


def cutover_table(args) -> bool:
    """``xbt gallery cutover`` of a Ray backfill: the LanceDB table drops its old vectors (``False``: already done)."""
    from ..cluster.engine import open_lance_gallery

    gallery = open_lance_gallery(args.gallery, lance_dir(args))
    if not gallery.store.has_old:
        return False
    gallery.store.cutover()  # refused, naming how many items are left, before every item is backfilled
    return True
