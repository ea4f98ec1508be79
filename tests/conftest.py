"""Shared fixtures: offline mode, a private embedding cache, and tiny real CLIP models."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# OpenMP threads (torch, FAISS) that busy-wait slow the suite ten-fold when another process holds
# a core of a small machine; passive waiting costs nothing when the cores are free.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Each test session caches embeddings in its own folder, never in ~/.cache."""
    monkeypatch.setenv("XBT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "xbt-cache"))


def one_error_line(capsys, command: str) -> str:
    """The single ``xbt <command>: error: ...`` line on stderr (no traceback)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"xbt {command}: error: "), err
    return err


def tiny_open_clip(embed_dim: int, seed: int, width: int = 32):
    """A randomly initialised open_clip CLIP small enough for CPU tests."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=embed_dim,
        vision_cfg={"image_size": 32, "layers": 1, "width": width, "head_width": 16, "patch_size": 16},
        text_cfg={"context_length": 24, "vocab_size": 49408, "width": width, "heads": 2, "layers": 1},
    )
    return model.eval()


def tiny_hf_clip(embed_dim: int, seed: int):
    """A randomly initialised transformers CLIPModel small enough for CPU tests."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 24,
            "vocab_size": 49408,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
        },
        projection_dim=embed_dim,
    )
    return CLIPModel(config).eval()


@pytest.fixture(scope="session")
def old_new():
    """Two tiny random open_clip models of different embed dims (old 32-d, new 48-d)."""
    import xbt.models.encoders as enc

    return enc.as_encoder(tiny_open_clip(32, seed=1), name="tiny-old"), enc.as_encoder(
        tiny_open_clip(48, seed=2), name="tiny-new"
    )


@pytest.fixture(scope="session")
def captions_400():
    import xbt.toy

    return xbt.toy.text_corpus(400)


def fit_briefly(old, new, texts, pairs, **kw):
    """``xbt.fit`` with one stage-1 epoch and two stage-2 epochs of small batches, no held-out split.

    The image path is LoRA (``image_tower="lora"``), so the adapters these tests save, merge and export carry a
    LoRA model; the default frozen tower has its own tests (test_image_head.py)."""
    import xbt

    stage2 = {"image_tower": "lora", "epochs": 2, "batch_size": 8, "val_fraction": 0.0, **kw.pop("stage2", {})}
    return xbt.fit(old, new, texts, pairs=pairs, epochs=1, stage2=stage2, verbose=False, **kw)


@pytest.fixture(scope="session")
def stage1_adapter(old_new, captions_400):
    """A stage-1 adapter of the tiny random pair, fitted on 100 captions for one epoch."""
    import xbt

    return xbt.fit(*old_new, captions_400[:100], epochs=1, verbose=False)
