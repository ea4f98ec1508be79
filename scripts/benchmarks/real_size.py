"""Real architectures at real size: every step of xbt on random-weight towers, each step's time and peak memory.

    python -m scripts.benchmarks.real_size                          # the three upgrades below (CPU: about 1 h)
    python -m scripts.benchmarks.real_size --upgrades rn50 --repeats 3
    python -m scripts.benchmarks.real_size --light                  # the same families at their smallest (a test)

No pretrained weights can be downloaded here, so the towers are built offline with random weights:
open_clip's model configs and BPE ship with the package, and a transformers ``CLIPConfig()`` is ViT-B/32's
shape (its tokenizer is open_clip's BPE handed to ``CLIPTokenizer``, its folder loaded back through
``xbt.load_clip("hf:<folder>")`` as a Hub model would be). The upgrades:

- ``vit``: open_clip ``ViT-B-32`` (old) -> ``ViT-L-14`` (new);
- ``rn50``: open_clip ``RN50`` (a ModifiedResNet) -> ``ViT-B-16``;
- ``hf``: a transformers ``CLIPModel`` of ViT-B/32 shape -> open_clip ``ViT-L-14``;
- ``to-hf`` (``RN50`` -> the transformers ViT-B/32) and ``to-rn50`` (``ViT-B-32`` -> ``RN50``): LoRA on the two
  other families of image tower.

For each: stage 1 on ``--texts`` toy captions (one epoch), stage 2 with LoRA on the NEW image tower on
``--pairs`` toy image-caption pairs at the tower's own image size (one epoch, the guard off so the trained
LoRA path is what the next steps serve), the query cost of the unmerged
adapter, ``merge``, the merged query cost, ``save_pretrained`` and ``load_adapter``, ``export("onnx")``
(which checks onnxruntime against torch within 1e-4), a fresh ``python -I`` process serving the export without
torch or xbt, ONNX runtime against torch at the same batch, and ``xbt.evaluate`` on a Karpathy-format
Flickr30k fixture of toy scenes at 224 px. Random weights mean the recalls say nothing: what is measured is
that every step runs, and its cost. Query costs are ratios to the bare NEW model, the median of
``--repeats`` paired rounds whose order alternates (``xbt.evaluation.evaluate.paired_rounds``), on
preprocessed pixels. Peak RSS is this process's resident memory sampled every 20 ms during the step (it
includes what earlier steps still hold). ``--light`` runs the same steps on the smallest configurations of
the same families. Prints a table, writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

import xbt
from xbt.core.files import write_json
from xbt.evaluation.evaluate import paired_rounds
from xbt.models.encoders import CLIPEncoder, as_encoder

from ..assets.train_toy_clips import clip_bpe_tokenizer

ROOT = Path(__file__).resolve().parents[2]
UPGRADES = {
    "vit": ("ViT-B-32", "ViT-L-14"),
    "rn50": ("RN50", "ViT-B-16"),
    "hf": ("hf-random:ViT-B-32", "ViT-L-14"),
    # LoRA's targets on the two other families of image tower: each as the NEW model
    "to-hf": ("RN50", "hf-random:ViT-B-32"),
    "to-rn50": ("ViT-B-32", "RN50"),
}
#: the smallest configurations of the same families (``--light``): open_clip ViT, ModifiedResNet, transformers ViT
TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY = {
    "tiny-vit": {"vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16}},
    "tiny-vit-wide": {"vision_cfg": {"image_size": 48, "layers": 2, "width": 48, "patch_size": 16, "head_width": 16}},
    "tiny-rn": {"vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8}},
}
LIGHT_UPGRADES = {
    "vit": ("tiny-vit", "tiny-vit-wide"),
    "rn50": ("tiny-rn", "tiny-vit-wide"),
    "hf": ("hf-random:tiny", "tiny-vit-wide"),
    "to-hf": ("tiny-rn", "hf-random:tiny"),
    "to-rn50": ("tiny-vit", "tiny-rn"),
}
HF_SHAPES = {
    "ViT-B-32": {},  # CLIPConfig's defaults are ViT-B/32's shape
    "tiny": {
        "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1},
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "image_size": 32,
            "patch_size": 16,
        },
        "projection_dim": 32,
    },
}


class PeakRSS:
    """This process's peak resident memory (MB) while the ``with`` block runs, sampled every 20 ms."""

    def __enter__(self) -> PeakRSS:
        self.proc, self.peak, self._stop = psutil.Process(), 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:  # one more sample after the stop, so the block's last moment counts
            self.peak = max(self.peak, self.proc.memory_info().rss / 2**20)
            if self._stop.is_set():
                return
            self._stop.wait(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def build(name: str, folder: Path) -> CLIPEncoder:
    """A random-weight CLIP: an open_clip config name, a ``TINY`` one, or ``hf-random:<HF_SHAPES key>``."""
    import open_clip

    torch.manual_seed(0)
    if name.startswith("hf-random:"):
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

        config = CLIPConfig(**HF_SHAPES[name.split(":", 1)[1]])
        path = folder / name.replace(":", "-")
        CLIPModel(config).save_pretrained(path)  # safetensors, loaded back as a Hub folder is
        clip_bpe_tokenizer(77).save_pretrained(path)  # open_clip's BPE, as the patterns world's OLD has it
        size = config.vision_config.image_size
        CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
            path
        )
        return xbt.load_clip(f"hf:{path}", device="cpu")
    if name in TINY:
        model = open_clip.CLIP(embed_dim=32 if "wide" not in name else 48, text_cfg=TINY_TEXT, **TINY[name])
        return as_encoder(model.eval(), name)
    return xbt.load_clip(name, device="cpu")


def karpathy_fixture(root: Path, n_images: int, size: int = 224) -> Path:
    """A Flickr30k Karpathy split of toy scenes at ``size`` px: ``dataset_flickr30k.json`` + ``flickr30k-images/``."""
    images, captions = xbt.toy.test_split(n_images)
    (root / "flickr30k-images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (im, caps) in enumerate(zip(images, captions)):
        im.resize((size, size)).save(root / "flickr30k-images" / f"{i}.jpg", quality=95)
        sentences = [{"raw": c, "tokens": c.split()} for c in caps]
        entries.append({"split": "test", "filename": f"{i}.jpg", "imgid": i, "sentences": sentences})
    (root / "dataset_flickr30k.json").write_text(json.dumps({"dataset": "flickr30k", "images": entries}))
    return root


def cost(bare, ours, items, repeats: int) -> dict:
    """Median ratio (ours / bare) over paired alternating rounds, after one warm-up call each."""
    with torch.no_grad():
        bare(items), ours(items)
        rounds = paired_rounds(bare, ours, items, repeats)
    return {
        "ratio": round(statistics.median(o / b for b, o in rounds), 3),
        "bare_ms": round(1000 * statistics.median(b for b, _ in rounds), 1),
        "ours_ms": round(1000 * statistics.median(o for _, o in rounds), 1),
    }


def query_costs(new, adapter, texts, pixels, batches, repeats) -> dict:
    """Text and image query cost of ``adapter`` against the bare NEW model, per batch size."""
    out = {}
    for b in batches:
        out[f"text batch {b}"] = cost(new.encode_text, adapter.encode_text, texts[:b], repeats)
        out[f"image batch {b}"] = cost(new.encode_image, adapter.encode_image, pixels[:b], repeats)
    return out


def serve_fresh(folder: Path, texts: list[str], image_files: list[Path]) -> dict:
    """The export served by a ``python -I`` process that imports neither torch nor xbt: its outputs and modules."""
    script = f"""
import json, sys
sys.path.insert(0, {str(folder)!r})
from PIL import Image
import xbt_runtime
enc = xbt_runtime.load({str(folder)!r}, threads=1)
t = enc.encode_text({texts!r})
i = enc.encode_image([Image.open(p) for p in {[str(p) for p in image_files]!r}])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "xbt", "transformers", "open_clip"))
print(json.dumps({{"text": t.tolist(), "image": i.tolist(), "loaded": loaded}}))
"""
    out = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"the fresh process failed to serve the export:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_upgrade(key: str, old_name: str, new_name: str, args, work: Path) -> dict:
    steps: list[dict] = []
    result: dict = {"upgrade": key, "old": old_name, "new": new_name, "steps": steps}

    def step(name: str, fn):
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            value = fn()
            seconds = time.perf_counter() - t0
        steps.append({"step": name, "seconds": round(seconds, 2), "peak_rss_mb": round(rss.peak)})
        print(f"[{key}] {name}: {seconds:.1f}s, peak RSS {rss.peak:,.0f} MB", flush=True)
        return value

    old = step("build old (random weights)", lambda: build(old_name, work))
    new = step("build new (random weights)", lambda: build(new_name, work))
    result["params_m"] = {
        w: round(sum(p.numel() for p in m.model.parameters()) / 1e6, 1) for w, m in (("old", old), ("new", new))
    }
    result["image_size"] = {
        w: int(m.preprocess_images([xbt.toy.test_split(1)[0][0]]).shape[-1]) for w, m in (("old", old), ("new", new))
    }
    world = xbt.toy.get_world("shapes")
    texts = world.text_corpus(args.texts)
    pairs = world.pair_list(args.pairs)
    cache = work / f"cache-{key}"
    stage1 = step("stage 1", lambda: xbt.fit(old, new, texts, epochs=1, cache=cache, verbose=False))
    # the guard off: the trained LoRA path is served (and merged, saved, exported) whatever random weights score
    stage2 = {"image_tower": "lora", "epochs": 1, "batch_size": 8, "caption_bank_size": 256, "text_epochs": 1}
    stage2["guard"] = False
    adapter = step(
        "stage 2 (LoRA on the NEW image tower)",
        lambda: xbt.fit(old, new, texts, pairs=pairs, stage1=stage1, stage2=stage2, cache=cache, verbose=False),
    )
    result["lora_kept"] = adapter.training["kept"]["image"]["kept"]
    result["lora_modalities"] = sorted(adapter.lora_modalities) if adapter.lora is not None else []
    images = [im for im, _ in pairs[: max(args.batches)]]
    probe_texts = [c for _, c in pairs[: max(args.batches)]]
    pixels = new.preprocess_images(images)
    result["query_cost_unmerged"] = step(
        "query cost, unmerged", lambda: query_costs(new, adapter, probe_texts, pixels, args.batches, args.repeats)
    )
    result["lora_layers"] = sum(hasattr(m, "lora_A") for m in adapter.lora.model.modules()) if adapter.lora else 0
    before = adapter.encode_image(pixels[:2]), adapter.encode_text(probe_texts[:2])
    step("merge", adapter.merge)
    after = adapter.encode_image(pixels[:2]), adapter.encode_text(probe_texts[:2])
    result["merge_max_abs_diff"] = max(float((a - b).abs().max()) for a, b in zip(after, before))
    result["query_cost_merged"] = step(
        "query cost, merged", lambda: query_costs(new, adapter, probe_texts, pixels, args.batches, args.repeats)
    )
    folder = step("save_pretrained", lambda: adapter.save_pretrained(work / f"adapter-{key}"))
    result["adapter_folder_mb"] = round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20, 2)
    loaded = step("load_adapter", lambda: xbt.load_adapter(folder, new=new, old=old))
    same = (loaded.encode_text(probe_texts[:4]) - adapter.encode_text(probe_texts[:4])).abs().max().item()
    result["load_adapter_max_abs_diff_text"] = same
    export = step("export onnx (with its check)", lambda: adapter.export("onnx", work / f"onnx-{key}"))
    manifest = json.loads((export / "xbt_export.json").read_text())
    result["onnx_check"] = manifest["check"]
    result["onnx_folder_mb"] = round(sum(f.stat().st_size for f in export.rglob("*") if f.is_file()) / 2**20, 1)
    files = []
    for i, im in enumerate(images[:4]):
        files.append(work / f"probe-{key}-{i}.png")
        im.save(files[-1])
    served = step("serve the export in a fresh process", lambda: serve_fresh(export, probe_texts[:4], files))
    from PIL import Image

    reopened = [Image.open(f) for f in files]
    result["fresh_process"] = {
        "modules_loaded": served["loaded"],
        "max_abs_diff_text": float((torch.tensor(served["text"]) - adapter.encode_text(probe_texts[:4])).abs().max()),
        "max_abs_diff_image": float((torch.tensor(served["image"]) - adapter.encode_image(reopened)).abs().max()),
    }
    result["onnx_vs_torch"] = step(
        "onnx runtime vs torch", lambda: onnx_cost(export, adapter, probe_texts, pixels, args)
    )
    ds_root = karpathy_fixture(work / "flickr30k", args.eval_images)
    dataset = xbt.load_dataset("flickr30k", split="test", root=ds_root)
    report = step(
        "evaluate (Karpathy fixture, 224 px)",
        lambda: xbt.evaluate(old, {"xbt": adapter}, dataset=dataset, cache=False, query_cost=False, verbose=False),
    )
    result["evaluate"] = {"n_images": report.n_images, "n_captions": report.n_captions, "timings": report.timings}
    return result


def onnx_cost(export: Path, adapter, texts, pixels, args) -> dict:
    """onnxruntime's served export against the merged torch adapter, same inputs, per batch: time ratio."""
    sys.path.insert(0, str(export))
    import xbt_runtime

    served = xbt_runtime.load(export, threads=torch.get_num_threads())
    sys.path.remove(str(export))
    out = {}
    for b in args.batches:
        out[f"text batch {b}"] = cost(adapter.encode_text, served.encode_text, texts[:b], args.repeats)
        arr = pixels[:b].numpy()
        out[f"image batch {b}"] = cost(
            lambda _: adapter.encode_image(pixels[:b]), lambda _: served.encode_image(arr), None, args.repeats
        )
    return out


def table(results: list[dict]) -> None:
    print("\n| upgrade | step | time (s) | peak RSS (MB) |\n|---|---|---:|---:|")
    for r in results:
        for s in r["steps"]:
            print(f"| {r['old']} -> {r['new']} | {s['step']} | {s['seconds']} | {s['peak_rss_mb']:,} |")
    print("\n| upgrade | query | unmerged / bare | merged / bare | onnx / torch |\n|---|---|---:|---:|---:|")
    for r in results:
        for q, c in r["query_cost_merged"].items():
            print(
                f"| {r['old']} -> {r['new']} | {q} | {r['query_cost_unmerged'][q]['ratio']} | {c['ratio']} | "
                f"{r['onnx_vs_torch'][q]['ratio']} |"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upgrades", nargs="+", default=list(UPGRADES), choices=list(UPGRADES))
    p.add_argument("--light", action="store_true", help="the smallest configurations of the same families")
    p.add_argument("--texts", type=int, default=2000, help="stage-1 captions")
    p.add_argument("--pairs", type=int, default=32, help="stage-2 image-caption pairs")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="query batch sizes timed")
    p.add_argument("--repeats", type=int, default=5, help="paired rounds per query-cost ratio")
    p.add_argument("--eval-images", type=int, default=50, help="images of the Karpathy fixture (5 captions each)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "real_size.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = LIGHT_UPGRADES if args.light else UPGRADES
    results = []
    summary = {
        "light": args.light,
        "threads": torch.get_num_threads(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "gpu": torch.cuda.is_available()},
        "options": {k: str(v) for k, v in vars(args).items() if k != "out"},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xbt-real-size-") as tmp:
        for key in args.upgrades:
            work = Path(tmp) / key
            work.mkdir()
            results.append(run_upgrade(key, *names[key], args, work))
            write_json(args.out, summary)  # each upgrade saved as soon as it is measured
            table(results[-1:])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
