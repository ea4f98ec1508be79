"""What every subcommand shares: loading models and adapters by CLI spec, flags generated from option dataclasses,
vector files, a gallery's item source."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import toy
from ..adapters.config import read_config
from ..adapters.hub import resolve
from ..adapters.registry import load_adapter
from ..core.errors import XBTError
from ..data.sources import LazyImages
from ..models.encoders import CLIPEncoder, load_clip
from ..toy.splits import test_split


def load_model(
    spec: str, pretrained: str | None = None, device: str | None = None, revision: str | None = None
) -> CLIPEncoder:
    """A ``CLIPEncoder`` from a CLI model spec: an existing folder is an open_clip ``local-dir``, a toy
    name (``xbt.toy.MODEL_NAMES``) a shipped toy model, anything else goes to ``xbt.load_clip``."""
    if Path(spec).expanduser().is_dir():
        return load_clip(f"local-dir:{Path(spec).expanduser()}", device=device)
    if spec.partition("+")[0] in toy.MODEL_NAMES:  # a shipped toy model or a variant of one
        return toy.load_model(spec, device=device)
    try:
        return load_clip(spec, pretrained=pretrained, device=device, revision=revision)
    except XBTError:
        raise
    except Exception as exc:  # unknown name, missing weights, no network
        why = str(exc)
        if "not found in built-ins" in why:  # open_clip lists its ~150 configs here: name the kinds of spec instead
            why = "no open_clip model config of that name (open_clip.list_models() lists them, e.g. ViT-B-32)"
        raise XBTError(
            f"cannot load model {spec!r} (pretrained={pretrained!r}): {type(exc).__name__}: {why}. A model is a toy "
            f"name ({', '.join(toy.MODEL_NAMES)}; xbt toy models), an open_clip name with --*-pretrained, "
            "hf:<Hub id> or a local folder"
        ) from exc


def new_from_adapter_config(path: str, device: str | None) -> CLIPEncoder:
    """Load the new model named in an adapter's config (for ``--adapter`` without ``--new``)."""
    ref = read_config(resolve(path)).new_model
    try:
        return load_model(ref.name, ref.pretrained, device, ref.revision)
    except XBTError as exc:
        raise XBTError(
            f"{exc}; the adapter's config names its new model {ref.label!r}: pass --new NAME [--new-pretrained TAG]"
        ) from exc


def check_repo_id(repo_id: str, flag: str = "--repo") -> str:
    """Refuse a Hub repo id that is not ``namespace/name`` (by ``huggingface_hub``'s own rules), offline."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        problem = str(exc).splitlines()[0]
    else:
        problem = None if repo_id.count("/") == 1 else "it names no namespace"
    if problem:
        raise XBTError(
            f"{flag} {repo_id!r} is not a Hub repo id ({problem}); give namespace/name, e.g. org/xbt-adapter"
        )
    return repo_id


def adapter_spec(spec: str) -> tuple[str, str]:
    """``(name, folder or repo)`` of an ``--adapter`` value: ``NAME=FOLDER`` or ``FOLDER`` (name ``""``); a
    folder whose own name holds ``=`` is a folder."""
    name, _, path = spec.partition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
    return name, path


def load_adapters(specs: list[str], new, old, check_fingerprint: bool) -> dict[str, Any]:
    """``NAME=FOLDER`` or ``FOLDER`` (named by its method) -> loaded adapters, in order."""
    out: dict[str, Any] = {}
    for spec in specs:
        name, path = adapter_spec(spec)
        adapter = load_adapter(path, new, old=old, check_fingerprint=check_fingerprint)
        label = name or adapter.method
        if label in out:
            label = f"{label} ({Path(path).name})"
        out[label] = adapter
    return out


def add_option_flags(
    parser: argparse.ArgumentParser, cls: type, prefix: str | None = None, exclude: Sequence[str] = ()
) -> dict[str, str]:
    """Add one flag per field of the option dataclass ``cls``; returns {argparse dest: field name}.

    ``--<prefix>-<field-name>`` (dashes for underscores); bools get ``--x/--no-x``, tuples take
    several values, ``X | None`` fields take an ``X``. Defaults are suppressed: only given flags appear.
    """
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.what} options" + (f" (--{prefix}-...)" if prefix else ""))
    dests = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        typ = hints[f.name]
        if isinstance(typ, types.UnionType):  # X | None
            typ = next(a for a in typing.get_args(typ) if a is not type(None))
        dest = f"{prefix or 'opt'}__{f.name}"
        text = f.metadata.get("help", "")
        if "default" not in text and "None:" not in text:  # where the help names its default, once is enough
            text += f" (default: {'unset' if f.default is None else _shown(f.default)})"
        kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": text}
        if typ is not bool and "choices" not in f.metadata:
            kw["metavar"] = f.name.upper()  # --stage1-noise-std NOISE_STD, not STAGE1__NOISE_STD
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(typ) is tuple:
            kw.update(nargs="+", type=typing.get_args(typ)[0])
        else:
            kw["type"] = typ
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        group.add_argument("--" + (f"{prefix}-" if prefix else "") + f.name.replace("_", "-"), **kw)
        dests[dest] = f.name
    return dests


def _shown(value: Any) -> str:
    """A default as a user types it: tuples as space-separated values."""
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def given_options(args: argparse.Namespace, dests: dict[str, str]) -> dict[str, Any]:
    """The options among ``dests`` that were given on the command line, by field name."""
    return {name: getattr(args, dest) for dest, name in dests.items() if hasattr(args, dest)}


def load_vectors(path: str) -> torch.Tensor:
    """A float32 [n, d] tensor from a ``.safetensors`` file (its one tensor, or ``"embeddings"``) or a ``.npy`` array.

    Pickled formats are never read: ``.npy`` files holding Python objects are refused.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise XBTError(f"{file} does not exist; give a .safetensors or .npy file of [n_pairs, d_old] vectors")
    if file.suffix == ".npy":
        try:
            array = np.load(file, allow_pickle=False)
        except ValueError as exc:
            raise XBTError(
                f"{file} holds pickled Python objects, which xbt never loads; save a plain float array "
                "(np.save(path, vectors.astype('float32')))"
            ) from exc
        vectors = torch.from_numpy(np.ascontiguousarray(array))
    elif file.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(file))
        if len(tensors) != 1 and "embeddings" not in tensors:
            raise XBTError(f"{file} holds tensors {sorted(tensors)}; save one tensor, or name it 'embeddings'")
        vectors = tensors["embeddings"] if "embeddings" in tensors else next(iter(tensors.values()))
    else:
        raise XBTError(
            f"{file}: vectors must be a .safetensors or .npy file (pickle formats such as .pt or .pkl are never read)"
        )
    if vectors.ndim != 2 or not vectors.is_floating_point():
        raise XBTError(
            f"{file} holds a {tuple(vectors.shape)} {vectors.dtype} array; expected float vectors [n_pairs, d_old]"
        )
    return vectors.float()


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def items_spec(args: argparse.Namespace) -> dict[str, Any]:
    """Where the items come from, as recorded in ``gallery.json``."""
    given = [x for x in (args.texts, args.images, args.toy) if x]
    if len(given) != 1:
        raise XBTError("give exactly one of --texts FILE, --images DIR or --toy images|captions")
    if args.texts:
        if not Path(args.texts).is_file():
            raise XBTError(f"--texts {args.texts} is not a file; give a UTF-8 caption file, one caption a line")
        spec = {"kind": "texts", "file": str(Path(args.texts).resolve())}
        if not load_items(spec)[1]:
            raise XBTError(f"--texts {args.texts} holds no captions; give a UTF-8 caption file, one caption a line")
        return spec
    if args.images:
        folder = Path(args.images).resolve()
        if not folder.is_dir():
            raise XBTError(f"--images {args.images} is not a folder; give the folder that holds the gallery's images")
        files = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
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
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise XBTError(f"{path} is not UTF-8 text ({exc}); save the captions as UTF-8, one a line") from None
        return "text", [line.strip() for line in lines if line.strip()]
    if spec.get("kind") == "images":
        return "image", LazyImages(spec["files"])
    if spec.get("kind") == "toy":
        images, caps = test_split()
        return ("image", images) if spec["what"] == "images" else ("text", [c for cs in caps for c in cs])
    raise XBTError(f"unknown item source {spec!r} in gallery.json")
