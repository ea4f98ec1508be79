"""``Adapter``: encode with the NEW model straight into the OLD embedding space; save, load, share.

An adapter is the new model (untouched) plus what xbt trained or fitted on top of it: a
projection into the old space (stage 1, or a training-free map). On disk it is a folder with
``adapter_config.json`` (what it is, which models it joins, how it was made) and
``projection.safetensors``; the new model itself is never saved - you load it as usual and hand
it to ``from_pretrained``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .embed import embed_images, embed_texts
from .encoders import CLIPEncoder, as_encoder
from .errors import XBTError
from .projection import Projection

FORMAT = "xbt-adapter"
FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
PROJECTION_NAME = "projection.safetensors"
LORA_DIR = "lora"


def model_info(encoder: CLIPEncoder) -> dict[str, Any]:
    """What an adapter records about a model to recognise it later."""
    return {
        "name": encoder.name,
        "backend": encoder.backend,
        "embed_dim": encoder.embed_dim,
        "fingerprint": encoder.fingerprint,
    }


class Adapter:
    """New-model encoders whose outputs land in the old model's embedding space.

    ``encode_text`` / ``encode_image`` return float32 [n, d_old] L2-normalised CPU tensors that
    can be searched directly against a gallery embedded by the old model. ``embed_texts`` /
    ``embed_images`` do the same for large inputs (batched, progress bar, on-disk cache).
    """

    #: True for query-fusion methods that also run the OLD encoder on every query.
    requires_old_encoder: bool = False

    def __init__(
        self,
        new: Any,
        projection: Projection,
        method: str = "xbt",
        old_info: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
        lora: CLIPEncoder | None = None,
    ) -> None:
        self.new = as_encoder(new)
        # Stage 2: a LoRA-adapted copy of the new model (a PEFT model); None for stage 1 / baselines.
        self.lora = lora
        self._merged: CLIPEncoder | None = None
        if projection.d_new != self.new.embed_dim:
            raise XBTError(
                f"projection expects {projection.d_new}-d new embeddings but {self.new.name} gives "
                f"{self.new.embed_dim}-d; use the new model the adapter was trained for"
            )
        self.projection = projection.eval()
        self.method = method
        self.old_info = dict(old_info or {})
        self.training = dict(training or {})
        self.new_info = model_info(self.new)

    def __repr__(self) -> str:
        return (
            f"Adapter(method={self.method!r}, new={self.new.name!r} [{self.new.embed_dim}-d] -> "
            f"old={self.old_info.get('name', '?')!r} [{self.embed_dim}-d])"
        )

    @property
    def embed_dim(self) -> int:
        """Width of the output (the old model's embedding width)."""
        return self.projection.d_old

    # ------------------------------------------------------------------ encoding
    @torch.no_grad()
    def project(self, new_embeddings: torch.Tensor) -> torch.Tensor:
        """Map new-model embeddings [n, d_new] into the old space: float32 [n, d_old], unit rows."""
        x = new_embeddings.float().to(next(self.projection.parameters()).device)
        return self.projection(x).cpu()

    @property
    def query_encoder(self) -> CLIPEncoder:
        """The encoder whose outputs ``project`` maps: the new model, its LoRA copy, or the merged copy."""
        if self._merged is not None:
            return self._merged
        return self.lora if self.lora is not None else self.new

    @property
    def merged(self) -> bool:
        """True once ``merge()`` folded the LoRA weights into a plain copy of the new model."""
        return self._merged is not None

    def merge(self) -> Adapter:
        """Fold the LoRA weights into a plain copy of the new model for serving; returns self.

        The merged query path costs exactly what the bare new model costs. The unmerged LoRA
        weights are kept, so ``save_pretrained`` still writes the small PEFT adapter.
        A stage-1 or baseline adapter has nothing to merge and is returned unchanged.
        """
        if self.lora is not None and self._merged is None:
            from .lora import merged_copy

            self._merged = merged_copy(self.lora)
        return self

    def encode_text(self, texts: Sequence[str], batch_size: int = 256, verbose: bool = False) -> torch.Tensor:
        """Encode ``texts`` with the new model into the old space: float32 [n, d_old], unit rows."""
        return self.embed_texts(texts, batch_size=batch_size, cache=False, verbose=verbose)

    def encode_image(
        self, images: Sequence[Image.Image] | torch.Tensor, batch_size: int = 128, verbose: bool = False
    ) -> torch.Tensor:
        """Encode PIL images (or a preprocessed batch) into the old space: float32 [n, d_old], unit rows."""
        return self.embed_images(images, batch_size=batch_size, cache=False, verbose=verbose)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256, cache=None, verbose: bool = True) -> torch.Tensor:
        """Like ``encode_text`` but for big inputs: the new-model embeddings are cached on disk."""
        return self.project(embed_texts(self.query_encoder, texts, batch_size=batch_size, cache=cache, verbose=verbose))

    def embed_images(self, images, batch_size: int = 128, cache=None, verbose: bool = True) -> torch.Tensor:
        """Like ``encode_image`` but for big inputs: the new-model embeddings are cached on disk."""
        return self.project(embed_images(self.query_encoder, images, batch_size=batch_size, cache=cache, verbose=verbose))

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """The JSON-serialisable description saved as ``adapter_config.json``."""
        from . import __version__

        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "xbt_version": __version__,
            "method": self.method,
            "new_model": self.new_info,
            "old_model": self.old_info,
            "projection": self.projection.config(),
            "training": self.training,
            "lora": self.lora is not None,
        }

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.projection.state_dict().items()}

    def _lora_tensors(self) -> dict[str, torch.Tensor]:
        if self.lora is None:
            return {}
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.lora.peft_model).items()}

    def adapter_id(self) -> str:
        """A content hash of config and weights: two folders hold the same adapter iff ids match."""
        h = hashlib.sha256(json.dumps(self.config(), sort_keys=True, default=str).encode())
        for k, v in sorted({**self._tensors(), **self._lora_tensors()}.items()):
            h.update(k.encode())
            h.update(v.numpy().tobytes())
        return h.hexdigest()[:24]

    def save_pretrained(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the adapter to folder ``path`` atomically (config JSON + safetensors).

        The folder is assembled beside ``path`` and renamed into place, so an interrupted save
        never leaves a half-written adapter. A folder holding a *different* adapter, or files that
        are not an xbt adapter, is refused unless ``overwrite=True``.
        """
        target = Path(path)
        config = self.config()
        config["adapter_id"] = self.adapter_id()
        if target.exists() and any(target.iterdir()) and not overwrite:
            existing = _read_config(target, strict=False)
            if existing is None:
                raise XBTError(
                    f"{target} already holds files that are not an xbt adapter; choose an empty or new "
                    "directory, or pass overwrite=True to replace its contents"
                )
            if existing.get("adapter_id") != config["adapter_id"]:
                raise XBTError(
                    f"{target} already holds a different adapter (id {existing.get('adapter_id')}, method "
                    f"{existing.get('method')!r}); pass overwrite=True to replace it or save elsewhere"
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        try:
            save_file(self._tensors(), str(tmp / PROJECTION_NAME), metadata={"format": FORMAT})
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str) + "\n")
            self._save_extra(tmp)
            _swap_into_place(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _save_extra(self, folder: Path) -> None:
        """Store what lies beyond the projection: stage-2 LoRA weights in PEFT format under ``lora/``.

        Subclasses (fusion) extend this hook.
        """
        if self.lora is not None:
            self.lora.peft_model.save_pretrained(str(folder / LORA_DIR))

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, new: Any, revision: str | None = None) -> Adapter:
        """Load an adapter saved by ``save_pretrained``, from a folder or a Hugging Face Hub repo.

        Args:
            path_or_repo: a local folder, or a Hub repo id (``"org/name"``) fetched with
                ``huggingface_hub.snapshot_download`` (safetensors and JSON only; nothing unpickled).
            new: the NEW model the adapter was trained on (``xbt.load_clip`` result or raw model).
        """
        folder = _resolve(path_or_repo, revision)
        config = _read_config(folder, strict=True)
        if config.get("requires_old_encoder") and not cls.requires_old_encoder:
            raise XBTError(
                f"{folder} holds a {config.get('method')!r} fusion adapter, which runs the OLD model on every query; "
                f"load it with {config.get('load_with', 'xbt.baselines.FusionAdapter.from_pretrained(path, new=new, old=old)')}"
            )
        enc = as_encoder(new)
        saved_dim = int(config["new_model"]["embed_dim"])
        if enc.embed_dim != saved_dim:
            raise XBTError(
                f"adapter {folder} was trained on {config['new_model']['name']!r} ({saved_dim}-d embeddings) but "
                f"the new model given has {enc.embed_dim}-d embeddings; pass the new model it was trained for"
            )
        if enc.fingerprint != config["new_model"].get("fingerprint"):
            warnings.warn(
                f"the new model's weights differ from those adapter {folder} was trained on "
                f"({config['new_model']['name']!r}); outputs may not land in the old space",
                stacklevel=2,
            )
        try:
            state = load_file(str(folder / PROJECTION_NAME))
        except (SafetensorError, OSError) as exc:
            raise XBTError(f"{folder / PROJECTION_NAME} is missing or corrupt ({exc}); re-save or re-download the adapter") from exc
        projection = Projection(**config["projection"])
        try:
            projection.load_state_dict(state)
        except RuntimeError as exc:
            raise XBTError(f"{folder / PROJECTION_NAME} does not match its config ({exc}); the folder is corrupt") from exc
        return cls._build(enc, projection, config, folder)

    @classmethod
    def _build(cls, new: CLIPEncoder, projection: Projection, config: dict, folder: Path) -> Adapter:
        lora = _load_lora(new, folder) if config.get("lora") else None
        return cls(new, projection, method=config["method"], old_info=config["old_model"], training=config["training"], lora=lora)

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None, commit_message: str | None = None) -> str:
        """Save the adapter with a model card and upload it to the Hugging Face Hub; returns the repo URL."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "adapter")
            return push_folder(folder, repo_id, private=private, token=token, commit_message=commit_message)

    def model_card(self, repo_id: str = "") -> str:
        """A Hugging Face model card (markdown with YAML front matter) describing this adapter."""
        return model_card_from_config(self.config(), repo_id)


def model_card_from_config(config: dict, repo_id: str = "") -> str:
    """The model card text for an adapter described by its ``adapter_config.json`` contents."""
    new, old = config.get("new_model", {}), config.get("old_model", {})
    metrics = config.get("training", {}).get("metrics", {})
    lines = [
        "---",
        "library_name: xbt",
        "tags: [clip, backward-compatible-training, xbt, retrieval]",
        "---",
        f"# {repo_id or 'xbt adapter'}",
        "",
        f"An [xbt](https://arxiv.org/abs/2405.14715) adapter ({config.get('method')}): queries encoded by "
        f"`{new.get('name')}` ({new.get('embed_dim')}-d) land in the embedding space of "
        f"`{old.get('name')}` ({old.get('embed_dim')}-d), so they can search a gallery embedded by the old "
        "model without re-indexing it.",
        "",
        "```python",
        "import xbt",
        f"new = xbt.load_clip({new.get('name')!r})",
        f"adapter = xbt.Adapter.from_pretrained({repo_id!r}, new=new)",
        "queries = adapter.encode_text([\"a dog on a beach\"])  # [n, d_old], unit norm",
        "```",
    ]
    if metrics:
        lines += ["", "## Training metrics", "", "```json", json.dumps(metrics, indent=2, default=str), "```"]
    return "\n".join(lines) + "\n"


def push_folder(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Upload an adapter folder written by ``save_pretrained`` to the Hub (with a model card); returns the repo URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    config = _read_config(folder, strict=True)  # refuse to publish anything that is not an adapter
    card = folder / "README.md"
    if not card.exists():
        card.write_text(model_card_from_config(config, repo_id))
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message or f"xbt adapter ({config['method']})")
    return str(url)


def _load_lora(new: CLIPEncoder, folder: Path) -> CLIPEncoder:
    """Re-inject saved PEFT LoRA weights into a fresh copy of the new model."""
    import copy

    from peft import PeftModel

    from .lora import wrap_peft

    lora_dir = folder / LORA_DIR
    if not (lora_dir / "adapter_model.safetensors").is_file():
        raise XBTError(f"{lora_dir} has no adapter_model.safetensors although the config says the adapter has LoRA weights; the folder is incomplete, re-save or re-download it")
    try:
        peft_model = PeftModel.from_pretrained(copy.deepcopy(new.model), str(lora_dir))
    except Exception as exc:  # PEFT raises several types for a mismatched or corrupt adapter
        raise XBTError(f"cannot load the LoRA weights in {lora_dir} into {new.name} ({exc}); pass the new model the adapter was trained for") from exc
    enc = wrap_peft(new, peft_model.eval())
    enc.model.eval()
    return enc


def _resolve(path_or_repo: str | os.PathLike, revision: str | None) -> Path:
    local = Path(path_or_repo)
    if local.is_dir():
        return local
    if local.exists():
        raise XBTError(f"{local} is a file; pass the adapter's folder (the one holding {CONFIG_NAME})")
    repo = str(path_or_repo)
    if repo.count("/") != 1 or repo.startswith((".", "/")):
        raise XBTError(f"{repo!r} is neither an existing folder nor a Hub repo id like 'org/name'")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.md"]))
    except Exception as exc:  # network, auth, missing repo: say which and what to do
        raise XBTError(f"could not fetch adapter {repo!r} from the Hugging Face Hub ({exc}); check the id, your token and network, or pass a local folder") from exc


def _read_config(folder: Path, strict: bool) -> dict | None:
    path = folder / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        if strict:
            raise XBTError(f"{folder} is not an xbt adapter: cannot read {CONFIG_NAME} ({exc}); save one with Adapter.save_pretrained") from exc
        return None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        if strict:
            raise XBTError(f"{path} is not an xbt adapter config (no \"format\": \"{FORMAT}\"); point at a folder written by Adapter.save_pretrained")
        return None
    if strict and int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise XBTError(f"{path} uses adapter format v{config['format_version']}, newer than this xbt reads (v{FORMAT_VERSION}); upgrade xbt")
    return config


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Replace ``target`` by the finished folder ``tmp`` with renames only."""
    if not target.exists():
        os.replace(tmp, target)
        return
    backup = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, backup)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(backup, target)  # put the previous adapter back
        raise
    shutil.rmtree(backup, ignore_errors=True)
