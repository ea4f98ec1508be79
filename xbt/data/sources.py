"""Readers of the real benchmark files: Karpathy splits, NoCaps, clip-benchmark webdatasets.

Each ``read_*`` function checks the files up front (a missing file or wrong layout raises an
``XBTError`` naming what was expected where) and returns ``(images, captions, source)``: a lazy
image sequence (``LazyImages`` over files, ``ColumnImages`` over a Hugging Face dataset column),
one list of captions per image, and a label saying where they came from; ``xbt.datasets`` wraps
them into its dataset type. Images open on access, so a 31K-image gallery is never all in
memory. No model code.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

from PIL import Image

from ..core.errors import XBTError

#: Karpathy splits per dataset; "full" is the paper's protocol
KARPATHY_SPLITS = {
    "flickr30k": {
        "test": ("test",),
        "1k": ("test",),
        "val": ("val",),
        "train": ("train",),
        "full": ("train", "val", "test", "restval"),
    },
    "coco": {
        "test": ("test",),
        "5k": ("test",),
        "val": ("val",),
        "restval": ("restval",),
        "train": ("train",),
        "full": ("val", "restval"),
    },
}
KARPATHY_FILES = {"flickr30k": "dataset_flickr30k.json", "coco": "dataset_coco.json"}
HF_REPOS = {"flickr30k": "clip-benchmark/wds_flickr30k", "coco": "clip-benchmark/wds_mscoco_captions"}
HF_SPLITS = {"test": "test", "1k": "test", "5k": "test", "train": "train"}
NOCAPS_FILE = "nocaps_val_4500_captions.json"
NOCAPS_SPLITS = ("val", "in-domain", "near-domain", "out-domain")
WDS_IMAGE_COLUMNS = ("webp", "jpg", "jpeg", "png")


# ---------------------------------------------------------------------- lazy image sequences


class LazyImages(Sequence):
    """Images read from files on access: ``images[i]`` is an RGB ``PIL.Image``.

    A slice is another ``LazyImages`` (nothing is read); ``list(images[a:b])`` reads that chunk.
    """

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> Image.Image: ...
    @overload
    def __getitem__(self, index: slice) -> LazyImages: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return LazyImages(self.paths[index])
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise XBTError(
                f"cannot read image {path} ({exc}); re-download it or remove it from the annotations"
            ) from exc

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} files)"


class ColumnImages(Sequence):
    """The image column of a Hugging Face ``datasets.Dataset``, decoded on access (RGB PIL)."""

    def __init__(self, dataset: Any, column: str, rows: range | None = None) -> None:
        self.dataset = dataset.select_columns([column]) if rows is None else dataset
        self.column = column
        self.rows = rows if rows is not None else range(len(self.dataset))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ColumnImages(self.dataset, self.column, self.rows[index])
        return self.dataset[self.rows[index]][self.column].convert("RGB")

    def __iter__(self) -> Iterator[Image.Image]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"ColumnImages({len(self)} rows of column {self.column!r})"


# ---------------------------------------------------------------------- local files


def _need_root(root: str | os.PathLike | None, what: str) -> Path:
    if root is None:
        raise XBTError(f"loading {what} from local files needs root=<folder>; pass it (CLI: --root DIR)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise XBTError(f"root {path} is not a folder; it should hold {what}")
    return path


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise XBTError(f"expected {what} at {path}, but there is no such file; download it or pass annotations=<path>")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise XBTError(f"{path} is not readable JSON ({exc}); expected {what}") from exc


def _pick_image_dir(candidates: list[Path], first_relpath: str, what: str) -> Path:
    """The first candidate folder that holds the first image (its relative path given)."""
    for folder in candidates:
        if (folder / first_relpath).is_file():
            return folder
    tried = ", ".join(str(c / first_relpath) for c in candidates)
    raise XBTError(f"cannot find the {what} images: expected the first one at one of {tried}; pass image_dir=<folder>")


def _image_paths(relpaths: list[str], image_dir, anchor: Path, folder_names: list[str], what: str) -> list[Path]:
    """Full image paths: under ``image_dir`` if given, else under the first of ``anchor/<name>`` (or
    ``anchor`` itself) that holds the first image."""
    if image_dir is not None:
        folder = Path(image_dir).expanduser()
    else:
        folder = _pick_image_dir([anchor / n for n in folder_names] + [anchor], relpaths[0], what)
    return [folder / r for r in relpaths]


def _check_files(paths: list[Path], what: str) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise XBTError(
            f"{len(missing)} of {len(paths)} {what} images are missing, e.g. expected {shown}; "
            "complete the download or point image_dir at the right folder"
        )


def read_karpathy(
    name: str,
    root: str | os.PathLike | None,
    split: str = "test",
    annotations: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
) -> tuple[Sequence[Image.Image], list[list[str]], str]:
    """Flickr30k or COCO 2014 from Karpathy's split file plus an image folder.

    The file is ``{"images": [{"filename", "filepath" (COCO: "val2014"...), "split":
    "train|val|test|restval", "sentences": [{"raw": ...}, ...]}, ...], "dataset": ...}``. Image ``i``
    lives at ``image_dir/[filepath/]filename``.
    """
    if name not in KARPATHY_SPLITS:
        raise XBTError(f"no Karpathy split file for {name!r}; Karpathy files exist for {sorted(KARPATHY_SPLITS)}")
    splits = KARPATHY_SPLITS[name]
    if split not in splits:
        raise XBTError(f"unknown {name} split {split!r}; choose one of {sorted(splits)}")
    base = Path(root).expanduser() if root is not None else None
    if annotations is None:
        base = _need_root(root, f"Karpathy's {KARPATHY_FILES[name]} and the {name} images")
        ann_path = base / KARPATHY_FILES[name]
    else:
        ann_path = Path(annotations).expanduser()
    what = f"Karpathy's {name} split file ({KARPATHY_FILES[name]}, from caption_datasets.zip)"
    data = _read_json(ann_path, what)
    layout = (
        '{"images": [{"filename": ..., "filepath": ..., "split": "train|val|test|restval", '
        '"sentences": [{"raw": ...}]}], "dataset": ...}'
    )
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise XBTError(f"{ann_path} has the wrong layout: expected a JSON object {layout}")
    declared = data.get("dataset")
    if declared is not None and str(declared).lower() != name:
        raise XBTError(
            f"{ann_path} is Karpathy's {declared!r} file, not {name!r}; pass the {KARPATHY_FILES[name]} file"
        )
    wanted = set(splits[split])
    relpaths, captions = [], []
    for i, entry in enumerate(data["images"]):
        try:
            if entry["split"] not in wanted:
                continue
            rel = os.path.join(entry.get("filepath", "") or "", entry["filename"])
            caps = [s["raw"].strip() for s in entry["sentences"]]
        except (KeyError, TypeError, AttributeError) as exc:
            raise XBTError(
                f"{ann_path}: images[{i}] has the wrong layout (missing {exc}); each entry should be {layout}"
            ) from exc
        relpaths.append(rel)
        captions.append(caps)
    if not relpaths:
        raise XBTError(f"{ann_path} has no images in split {split!r} (looked for split values {sorted(wanted)})")
    names = ["flickr30k-images", "images", "flickr30k_images"] if name == "flickr30k" else ["images"]
    paths = _image_paths(relpaths, image_dir, base if base is not None else ann_path.parent, names, name)
    _check_files(paths, name)
    return LazyImages(paths), captions, f"local:{ann_path}"


def read_nocaps(
    root: str | os.PathLike | None,
    split: str = "val",
    annotations: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
) -> tuple[Sequence[Image.Image], list[list[str]], str]:
    """NoCaps validation (4,500 images, 10 captions each) from the official JSON and an image folder.

    The file is COCO-style: ``{"images": [{"id", "file_name", "domain"...}], "annotations":
    [{"image_id", "caption"}...]}``. ``split`` is ``"val"`` or one of its domains.
    """
    if split not in NOCAPS_SPLITS:
        raise XBTError(f"unknown nocaps split {split!r}; choose one of {list(NOCAPS_SPLITS)}")
    base = Path(root).expanduser() if root is not None else None
    if annotations is None:
        base = _need_root(root, f"NoCaps' {NOCAPS_FILE} and the validation images")
        ann_path = base / NOCAPS_FILE
    else:
        ann_path = Path(annotations).expanduser()
    data = _read_json(ann_path, f"the NoCaps validation captions ({NOCAPS_FILE})")
    layout = '{"images": [{"id": ..., "file_name": ...}], "annotations": [{"image_id": ..., "caption": ...}]}'
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise XBTError(f"{ann_path} has the wrong layout: expected a JSON object {layout}")
    by_image: dict[Any, list[tuple[Any, str]]] = {}
    for j, ann in enumerate(data["annotations"]):
        try:
            by_image.setdefault(ann["image_id"], []).append((ann.get("id", j), str(ann["caption"]).strip()))
        except (KeyError, TypeError, AttributeError) as exc:
            raise XBTError(
                f"{ann_path}: annotations[{j}] has the wrong layout (missing {exc}); expected {layout}"
            ) from exc
    relpaths, captions = [], []
    for i, img in enumerate(data["images"]):
        try:
            image_id, file_name = img["id"], img["file_name"]
        except (KeyError, TypeError) as exc:
            raise XBTError(f"{ann_path}: images[{i}] has the wrong layout (missing {exc}); expected {layout}") from exc
        if split != "val" and img.get("domain") != split:
            continue
        caps = [c for _, c in sorted(by_image.get(image_id, []), key=lambda t: t[0])]  # annotation id order
        if not caps:
            raise XBTError(f"{ann_path}: image {image_id} ({file_name}) has no annotations; the file is incomplete")
        relpaths.append(file_name)
        captions.append(caps)
    if not relpaths:
        raise XBTError(f"{ann_path} has no images in split {split!r} (domains are read from images[].domain)")
    paths = _image_paths(
        relpaths, image_dir, base if base is not None else ann_path.parent, ["val", "validation", "images"], "nocaps"
    )
    _check_files(paths, "nocaps")
    return LazyImages(paths), captions, f"local:{ann_path}"


# ---------------------------------------------------------------------- Hugging Face webdataset


def read_webdataset(
    name: str,
    split: str = "test",
    root: str | os.PathLike | None = None,
    repo: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Sequence[Image.Image], list[list[str]], str]:
    """Flickr30k or COCO from a clip-benchmark webdataset through Hugging Face ``datasets``.

    Shards are ``<split>/*.tar`` with members ``<key>.webp`` (or ``.jpg``/``.png``) and ``<key>.txt``
    (the image's captions, one per line). With ``root`` the shards are read from that folder
    (offline); without it from the Hub repository ``repo`` (default per dataset, see ``HF_REPOS``).
    """
    if split not in HF_SPLITS:
        hint = " ('full' needs Karpathy's val/restval images: use source='local')" if split == "full" else ""
        raise XBTError(
            f"split {split!r} is not in the webdataset repositories{hint}; choose one of {sorted(HF_SPLITS)}"
        )
    folder = HF_SPLITS[split]
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise XBTError("source='hf' needs the `datasets` package: pip install datasets") from exc
    repo = repo or HF_REPOS.get(name)
    if root is not None:
        base = Path(root).expanduser()
        shards = sorted(glob.glob(str(base / folder / "*.tar")))
        if not shards:
            raise XBTError(
                f"expected webdataset shards at {base / folder}/*.tar (the layout of {repo}: {folder}/0.tar, "
                f"{folder}/1.tar... holding <key>.webp + <key>.txt); download the repository there or fix root"
            )
        data_files = {folder: shards}
        where = str(base / folder)
    else:
        at = f"@{revision}" if revision else ""
        data_files = {folder: f"hf://datasets/{repo}{at}/{folder}/*.tar"}
        where = f"hf://datasets/{repo}/{folder}"
    try:
        ds = datasets.load_dataset(
            "webdataset",
            data_files=data_files,
            split=folder,
            cache_dir=str(cache_dir) if cache_dir is not None else None,
        )
    except Exception as exc:  # network, missing repo, corrupt tar: say which and what to do
        raise XBTError(
            f"could not read the webdataset shards at {where} ({type(exc).__name__}: {exc}); check the path or "
            "your network, or download the repository and pass root=<folder>"
        ) from exc
    columns = list(ds.column_names)
    image_col = next((c for c in WDS_IMAGE_COLUMNS if c in columns), None)
    if image_col is None or "txt" not in columns:
        raise XBTError(
            f"the shards at {where} have members {sorted(c for c in columns if not c.startswith('__'))}; expected "
            f"<key>.txt (captions, one per line) and an image <key>.{{{','.join(WDS_IMAGE_COLUMNS)}}}"
        )
    texts = list(ds.select_columns(["txt"])["txt"])
    captions = []
    for i, t in enumerate(texts):
        caps = [line.strip() for line in (t or "").splitlines() if line.strip()]
        if not caps:
            key = ds.select_columns(["__key__"])[i]["__key__"] if "__key__" in columns else i
            raise XBTError(
                f"sample {key!r} in {where} has an empty .txt member; each image needs its captions, one per line"
            )
        captions.append(caps)
    return ColumnImages(ds, image_col), captions, f"hf:{where}"
