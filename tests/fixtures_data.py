"""Build tiny dataset fixtures in each real on-disk format, offline, in a tmp folder.

Every image is a small solid colour that encodes its identity (``color_of(key)``), and every
caption names its image (``"a photo of item <key>, caption <j>"``), so tests can check that image
``i`` really comes with its own captions.
"""

from __future__ import annotations

import io
import json
import tarfile
import zlib
from pathlib import Path

from PIL import Image


def color_of(key: str) -> tuple[int, int, int]:
    """A colour determined by ``key`` (distinct for the few keys a fixture uses)."""
    h = zlib.crc32(key.encode())
    return (h & 255, (h >> 8) & 255, (h >> 16) & 255)


def caption_of(key: str, j: int) -> str:
    """Caption ``j`` of the image ``key``."""
    return f"a photo of item {key}, caption {j}"


def write_image(path: Path, key: str, fmt: str = "PNG") -> None:
    """An 8x8 image of ``color_of(key)`` (PNG: lossless, so the colour reads back exactly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color_of(key)).save(path, format=fmt)


def make_karpathy(
    root: Path, dataset: str, splits: dict[str, int], captions: int = 5, write_images: bool = True
) -> dict:
    """Karpathy's ``dataset_<name>.json`` plus images, laid out like the real download.

    Flickr30k images go to ``root/flickr30k-images/<filename>``; COCO images to
    ``root/<filepath>/<filename>`` with filepath ``val2014`` (val, test, restval) or ``train2014``.
    Image keys are ``<split><i>``; COCO's caption count varies (captions + i % 3) like the real file.
    """
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for split, n in splits.items():
        for i in range(n):
            key = f"{split}{i}"
            n_caps = captions + (i % 3 if dataset == "coco" else 0)
            entry = {
                "split": split,
                "sentences": [{"raw": caption_of(key, j), "tokens": []} for j in range(n_caps)],
                "imgid": len(entries),
                "sentids": [],
            }
            if dataset == "coco":
                folder = "train2014" if split == "train" else "val2014"
                entry.update(filepath=folder, filename=f"COCO_{folder}_{key}.png", cocoid=len(entries))
                rel = Path(folder) / entry["filename"]
                img_path = root / rel
            else:
                entry.update(filename=f"{key}.png")
                img_path = root / "flickr30k-images" / entry["filename"]
            if write_images:
                write_image(img_path, key)
            entries.append(entry)
    data = {"images": entries, "dataset": dataset}
    name = "dataset_flickr30k.json" if dataset == "flickr30k" else "dataset_coco.json"
    (root / name).write_text(json.dumps(data))
    return data


def make_nocaps(root: Path, domains: dict[str, int], captions: int = 10) -> dict:
    """``nocaps_val_4500_captions.json`` (COCO-style) plus images in ``root/val/``."""
    images, annotations = [], []
    for domain, n in domains.items():
        for i in range(n):
            key = f"{domain}-{i}"
            image_id = len(images)
            images.append(
                {
                    "id": image_id,
                    "file_name": f"{key}.png",
                    "domain": domain,
                    "open_images_id": key,
                    "height": 8,
                    "width": 8,
                }
            )
            write_image(root / "val" / f"{key}.png", key)
            for j in range(captions):
                annotations.append({"image_id": image_id, "id": len(annotations), "caption": caption_of(key, j)})
    # annotations interleaved across images, as in the real file's arbitrary order
    annotations = annotations[::2] + annotations[1::2]
    data = {"licenses": [], "info": {}, "images": images, "annotations": annotations}
    root.mkdir(parents=True, exist_ok=True)
    (root / "nocaps_val_4500_captions.json").write_text(json.dumps(data))
    return data


def make_wds(
    root: Path, split: str, n: int, shards: int = 2, ext: str = "webp", captions: int = 5, with_txt: bool = True
) -> list[str]:
    """clip-benchmark webdataset shards: ``root/<split>/<s>.tar`` with ``<key>.<ext>`` + ``<key>.txt``.

    Returns the image keys in order. WebP is written losslessly so colours read back exactly.
    """
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    keys = [f"s{i:09d}" for i in range(n)]
    per = -(-n // shards)
    fmt = {"webp": "WEBP", "jpg": "JPEG", "png": "PNG"}[ext]
    for s in range(shards):
        with tarfile.open(folder / f"{s}.tar", "w") as tar:
            for key in keys[s * per : (s + 1) * per]:
                buf = io.BytesIO()
                kwargs = {"lossless": True} if fmt == "WEBP" else ({"quality": 100} if fmt == "JPEG" else {})
                Image.new("RGB", (8, 8), color_of(key)).save(buf, format=fmt, **kwargs)
                members = [(f"{key}.{ext}", buf.getvalue())]
                if with_txt:
                    members.append((f"{key}.txt", "\n".join(caption_of(key, j) for j in range(captions)).encode()))
                for name, payload in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    (folder / "nshards.txt").write_text(str(shards))
    return keys
