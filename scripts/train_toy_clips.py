"""Train the toy world's OLD and NEW CLIPs from scratch on CPU and write them into the package.

    python scripts/train_toy_clips.py                 # both models, into xbt/toy/weights/
    python scripts/train_toy_clips.py --which old     # one of them

Each model is an open_clip ``CLIP`` built from the config below and trained with open_clip's
``ClipLoss`` on procedurally drawn scenes (``xbt.toy``). OLD is small, sees 32-pixel images, has a
64-d embedding and trains briefly; NEW is larger, sees 48-pixel images, has a 96-d
embedding, another seed, and trains longer: a genuinely better model, as a real upgrade is.

Weights ship as open_clip ``local-dir`` folders (``open_clip_config.json`` + fp16
``open_clip_model.safetensors``). ``metrics.json`` records each model's test Recall@1, measured
after the fp16 round trip, which the tests check the shipped weights against.
Not run in CI: see BENCHMARKS.md for its runtime.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import open_clip  # noqa: E402
from open_clip.loss import ClipLoss  # noqa: E402

from xbt.toy.data import test_split, train_split  # noqa: E402

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

MODELS = {
    "old": {
        "model_cfg": {
            "embed_dim": 64,
            "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 2},
        },
        "train": {"seed": 1, "steps": 600, "batch_size": 256, "lr": 2e-3, "warmup": 50, "train_images": 30000},
    },
    "new": {
        "model_cfg": {
            "embed_dim": 96,
            "vision_cfg": {"image_size": 48, "layers": 4, "width": 96, "head_width": 24, "patch_size": 8},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
        },
        "train": {"seed": 2, "steps": 1500, "batch_size": 256, "lr": 2e-3, "warmup": 100, "train_images": 30000},
    },
}


def preprocess_batch(images, image_size: int) -> torch.Tensor:
    """The same transform open_clip's eval preprocess applies (resize, to tensor, normalise)."""
    cfg = open_clip.transform.PreprocessCfg(size=image_size, mean=MEAN, std=STD)
    transform = open_clip.transform.image_transform_v2(cfg, is_train=False)
    return torch.stack([transform(im) for im in images])


@torch.no_grad()
def recall_at_1(model, tokenizer, image_size: int) -> dict[str, float]:
    """Test-split Recall@1, image->text (any of the 5 captions) and text->image, brute force."""
    model.eval()
    images, caps = test_split()
    pix = preprocess_batch(images, image_size)
    flat = [c for cs in caps for c in cs]
    owner = torch.arange(len(images)).repeat_interleave(5)
    img = F.normalize(torch.cat([model.encode_image(b) for b in pix.split(500)]), dim=-1)
    txt = F.normalize(torch.cat([model.encode_text(tokenizer(flat[i : i + 1000])) for i in range(0, len(flat), 1000)]), dim=-1)
    i2t = owner[(img @ txt.T).argmax(1)] == torch.arange(len(images))
    t2i = (txt @ img.T).argmax(1) == owner
    return {"i2t_r1": 100 * i2t.float().mean().item(), "t2i_r1": 100 * t2i.float().mean().item()}


def train_one(which: str, out_dir: Path, steps: int | None = None) -> dict:
    spec = MODELS[which]
    cfg, tr = spec["model_cfg"], dict(spec["train"])
    if steps:
        tr["steps"] = steps
    torch.manual_seed(tr["seed"])
    model = open_clip.CLIP(**cfg)
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    image_size = cfg["vision_cfg"]["image_size"]

    start = time.time()
    images, caps = train_split(tr["train_images"])
    pix = preprocess_batch(images, image_size)
    tokens = tokenizer([c for cs in caps for c in cs]).view(len(caps), 5, -1)
    print(f"[{which}] data ready in {time.time() - start:.0f}s: {len(caps)} images", flush=True)

    loss_fn = ClipLoss()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=tr["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / tr["warmup"]) * 0.5 * (1 + math.cos(math.pi * min(s, tr["steps"]) / tr["steps"])),
    )
    gen = torch.Generator().manual_seed(tr["seed"])
    model.train()
    bar = tqdm(range(tr["steps"]), desc=f"train {which}")
    for _ in bar:
        idx = torch.randint(len(caps), (tr["batch_size"],), generator=gen)
        which_cap = torch.randint(5, (tr["batch_size"],), generator=gen)
        img_f = F.normalize(model.encode_image(pix[idx]), dim=-1)
        txt_f = F.normalize(model.encode_text(tokens[idx, which_cap]), dim=-1)
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
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() for k, v in state.items()})
    metrics = recall_at_1(model, tokenizer, image_size)
    folder = out_dir / f"toy-{which}"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "open_clip_model.safetensors"))
    config = {
        "model_cfg": cfg,
        "preprocess_cfg": {"size": image_size, "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic", "resize_mode": "shortest"},
        "xbt_training": tr,
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    result = {**metrics, "train_seconds": round(train_seconds, 1), "steps": tr["steps"]}
    print(f"[{which}] {result}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--which", nargs="+", default=["old", "new"], choices=["old", "new"])
    parser.add_argument("--out", type=Path, default=ROOT / "xbt" / "toy" / "weights")
    parser.add_argument("--steps", type=int, default=None, help="override the step count (for quick trials)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    metrics_path = args.out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    for which in args.which:
        metrics[f"toy-{which}"] = train_one(which, args.out, args.steps)
        args.out.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
