"""Train a toy world's OLD and NEW CLIPs from scratch on CPU and write them into the package.

    python -m scripts.assets.train_toy_clips                              # the shapes world, both models
    python -m scripts.assets.train_toy_clips --world patterns --which old # one model of the patterns world

Shapes world: two open_clip ViT ``CLIP``s. OLD is small, sees 32-pixel images, has a 64-d
embedding and trains briefly; NEW is larger, sees 48-pixel images, has a 96-d embedding, another
seed, and trains longer: a genuinely better model, as a real upgrade is.
Patterns world: OLD is a transformers ``CLIPModel`` (ViT, 16 pixels, 96-d); NEW an open_clip
ModifiedResNet ``CLIP`` (32 pixels, 64-d, narrower than OLD), trained longer.
Patterns-wide world: the same scenes, two open_clip ViTs at a real CLIP's scales (logit scale fixed
at 100, 512-d OLD -> 768-d NEW); NEW is larger, sees 48 pixels and trains longer on twice the data;
OLD's text tower is narrow and shallow, so the upgrade can be backward compatible for text queries too.

Every model is trained through ``xbt.load_clip`` on its own saved folder (so training sees the
tokenizer and preprocessing users will get) with open_clip's ``ClipLoss``. Weights ship in fp16:
open_clip ``local-dir`` folders (``open_clip_config.json`` + ``open_clip_model.safetensors``) or a
transformers folder (``config.json``, ``model.safetensors``, tokenizer and processor files).
``metrics.json`` records each model's test Recall@1 after the fp16 round trip, which the tests
check the shipped weights against. Not run in CI: see BENCHMARKS.md for its runtime.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from safetensors.torch import save_file
from tqdm import tqdm

from xbt.models.encoders import load_clip
from xbt.toy.models import MODEL_NAMES
from xbt.toy.worlds import get_world

ROOT = Path(__file__).resolve().parents[2]

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

MODELS = {
    ("shapes", "old"): {
        "backend": "open_clip",
        "model_cfg": {
            "embed_dim": 64,
            "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 2},
        },
        "train": {"seed": 1, "steps": 600, "batch_size": 256, "lr": 2e-3, "warmup": 50, "train_images": 30000},
    },
    ("shapes", "new"): {
        "backend": "open_clip",
        "model_cfg": {
            "embed_dim": 96,
            "vision_cfg": {"image_size": 48, "layers": 4, "width": 96, "head_width": 24, "patch_size": 8},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
        },
        "train": {"seed": 2, "steps": 1500, "batch_size": 256, "lr": 2e-3, "warmup": 100, "train_images": 30000},
    },
    ("patterns", "old"): {
        "backend": "transformers",
        "model_cfg": {
            "projection_dim": 96,
            "vision_config": {
                "image_size": 16,
                "patch_size": 4,
                "hidden_size": 64,
                "intermediate_size": 256,
                "num_hidden_layers": 3,
                "num_attention_heads": 4,
            },
            "text_config": {
                "vocab_size": 49408,
                "max_position_embeddings": 32,
                "hidden_size": 64,
                "intermediate_size": 256,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "bos_token_id": 49406,
                "eos_token_id": 49407,
                "pad_token_id": 49407,
            },
        },
        "train": {"seed": 3, "steps": 400, "batch_size": 256, "lr": 2e-3, "warmup": 50, "train_images": 30000},
    },
    ("patterns", "new"): {
        "backend": "open_clip",
        "model_cfg": {
            "embed_dim": 64,
            "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
        },
        "train": {"seed": 4, "steps": 1000, "batch_size": 128, "lr": 2e-3, "warmup": 100, "train_images": 30000},
    },
    # patterns-wide: the patterns scenes with a realistic upgrade at a real CLIP's scales. Both towers keep
    # the logit scale fixed at 100 (a temperature of 0.01) and have real embedding widths, 512 -> 768. NEW
    # sees finer patches, is deeper and wider, and trains longer on twice the data, which begins with the
    # 30,000 scenes OLD was trained on. OLD sees 16 pixels (at 32 pixels it
    # reached 89.1 / 38.6, and the NEW model's features could not beat its text queries through its gallery).
    # OLD's text tower is narrower and shallower than its image tower (width 32, one layer), as in older CLIPs.
    # With a 48-wide, 2-layer text tower (74.4 / 32.4) OLD's text queries, co-trained with its image tower, found
    # its images better than any map on NEW's text features could (ceiling 29.4 T2I R@1): no adapter could be
    # backward compatible for text queries. With this tower OLD reaches 53.0 / 20.2 and the ceiling is above
    # old->old both ways (BENCHMARKS.md; the variants tried, context lengths 12-16 included: docs/benchmarks-log.md).
    ("patterns-wide", "old"): {
        "backend": "open_clip",
        "model_cfg": {
            "embed_dim": 512,
            "init_logit_scale": math.log(100),
            "vision_cfg": {"image_size": 16, "layers": 3, "width": 64, "head_width": 16, "patch_size": 4},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 1},
        },
        "train": {
            "seed": 5,
            "steps": 600,
            "batch_size": 256,
            "lr": 2e-3,
            "warmup": 50,
            "train_images": 30000,
            "fixed_logit_scale": True,
        },
    },
    ("patterns-wide", "new"): {
        "backend": "open_clip",
        "model_cfg": {
            "embed_dim": 768,
            "init_logit_scale": math.log(100),
            "vision_cfg": {"image_size": 48, "layers": 4, "width": 96, "head_width": 24, "patch_size": 8},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
        },
        "train": {
            "seed": 6,
            "steps": 1200,
            "batch_size": 256,
            "lr": 2e-3,
            "warmup": 100,
            "train_images": 60000,
            "fixed_logit_scale": True,
        },
    },
}


MODELS_BY_WORLD = sorted({world for world, _ in MODELS})


def save_folder(model: torch.nn.Module, spec: dict, folder: Path, train: dict, dtype=torch.float16) -> dict:
    """Write ``model`` as a folder ``xbt.load_clip`` reads (open_clip local-dir or transformers);
    returns the state dict written."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    if spec["backend"] == "transformers":
        model.save_pretrained(folder, state_dict=state)
        return state
    size = spec["model_cfg"]["vision_cfg"]["image_size"]
    save_file(state, str(folder / "open_clip_model.safetensors"))
    config = {
        "model_cfg": spec["model_cfg"],
        "preprocess_cfg": {
            "size": size,
            "mean": list(MEAN),
            "std": list(STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
        "xbt_training": train,
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return state


def clip_bpe_tokenizer(max_length: int):
    """A transformers ``CLIPTokenizer`` built offline: CLIP's BPE is the same in both libraries, so open_clip's
    vocabulary and merges are handed over (open_clip spells the two special tokens differently)."""
    from transformers import CLIPTokenizer

    simple = open_clip.SimpleTokenizer()
    special = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {special.get(k, k): v for k, v in simple.encoder.items()}
    merges = [tuple(m) for m in sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def new_model(spec: dict, folder: Path) -> torch.nn.Module:
    """A randomly initialised model; a transformers one gets its tokenizer and processor files."""
    if spec["backend"] == "open_clip":
        return open_clip.CLIP(**spec["model_cfg"])
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    cfg = spec["model_cfg"]
    model = CLIPModel(
        CLIPConfig(
            text_config=cfg["text_config"], vision_config=cfg["vision_config"], projection_dim=cfg["projection_dim"]
        )
    )
    folder.mkdir(parents=True, exist_ok=True)
    clip_bpe_tokenizer(cfg["text_config"]["max_position_embeddings"]).save_pretrained(folder)
    size = cfg["vision_config"]["image_size"]
    CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_mean=list(MEAN),
        image_std=list(STD),
    ).save_pretrained(folder)
    return model


def folder_name(world_name: str, which: str) -> str:
    """The model's folder under the weights dir, which is also its key in metrics.json."""
    world = get_world(world_name)
    return MODEL_NAMES[world.old_model if which == "old" else world.new_model]


def load(spec: dict, folder: Path):
    return load_clip(f"hf:{folder}" if spec["backend"] == "transformers" else f"local-dir:{folder}", device="cpu")


@torch.no_grad()
def recall_at_1(encoder, world) -> dict[str, float]:
    """Test-split Recall@1, image->text (any of the 5 captions) and text->image, brute force."""
    images, caps = world.test_split()
    flat = [c for cs in caps for c in cs]
    owner = torch.arange(len(images)).repeat_interleave(5)
    img = torch.cat([encoder.encode_image(images[i : i + 500]) for i in range(0, len(images), 500)])
    txt = torch.cat([encoder.encode_text(flat[i : i + 1000]) for i in range(0, len(flat), 1000)])
    i2t = owner[(img @ txt.T).argmax(1)] == torch.arange(len(images))
    t2i = (txt @ img.T).argmax(1) == owner
    return {"i2t_r1": 100 * i2t.float().mean().item(), "t2i_r1": 100 * t2i.float().mean().item()}


def train_one(world_name: str, which: str, out_dir: Path, steps: int | None = None) -> dict:
    spec = MODELS[(world_name, which)]
    tr = dict(spec["train"])
    if steps:
        tr["steps"] = steps
    world = get_world(world_name)
    folder = out_dir / folder_name(world_name, which)
    torch.manual_seed(tr["seed"])
    save_folder(new_model(spec, folder), spec, folder, tr, dtype=torch.float32)
    encoder = load(spec, folder)
    model = encoder.model
    if tr.get("fixed_logit_scale"):  # a real CLIP's 100, held, not learned
        model.logit_scale.requires_grad_(False)

    start = time.time()
    images, caps = world.train_split(tr["train_images"])
    pix = torch.cat([encoder.preprocess_images(images[i : i + 1000]) for i in range(0, len(images), 1000)])
    flat = [c for cs in caps for c in cs]
    print(f"[{world_name}/{which}] data ready in {time.time() - start:.0f}s: {len(caps)} images", flush=True)

    loss_fn = ClipLoss()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=tr["lr"]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / tr["warmup"]) * 0.5 * (1 + math.cos(math.pi * min(s, tr["steps"]) / tr["steps"])),
    )
    gen = torch.Generator().manual_seed(tr["seed"])
    model.train()
    bar = tqdm(range(tr["steps"]), desc=f"train {world_name}/{which}")
    for _ in bar:
        idx = torch.randint(len(caps), (tr["batch_size"],), generator=gen)
        which_cap = torch.randint(5, (tr["batch_size"],), generator=gen)
        img_f = F.normalize(encoder.image_features(pix[idx]), dim=-1)
        tokens = encoder.tokenize([flat[5 * i + k] for i, k in zip(idx.tolist(), which_cap.tolist())])
        txt_f = F.normalize(encoder.text_features(tokens), dim=-1)
        loss = loss_fn(img_f, txt_f, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.time() - start

    # Ship fp16 to keep the package small; metrics are taken after the round trip.
    model.eval()
    state = save_folder(model, spec, folder, tr)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    metrics = recall_at_1(encoder, world)
    result = {**metrics, "train_seconds": round(train_seconds, 1), "steps": tr["steps"]}
    print(f"[{world_name}/{which}] {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="shapes", choices=sorted(MODELS_BY_WORLD))
    parser.add_argument("--which", nargs="+", default=["old", "new"], choices=["old", "new"])
    parser.add_argument("--out", type=Path, default=ROOT / "xbt" / "toy" / "weights")
    parser.add_argument("--steps", type=int, default=None, help="override the step count (for quick trials)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    metrics_path = args.out / "metrics.json"
    for which in args.which:
        result = train_one(args.world, which, args.out, args.steps)
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        metrics[folder_name(args.world, which)] = result
        args.out.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
