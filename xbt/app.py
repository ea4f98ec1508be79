"""The search page, ``xbt app``: see an upgrade at work on an old gallery (Gradio; ``pip install 'xbt[app]'``).

``SearchEngine`` holds the old model, one or more adapters and a ``Gallery`` (the old vectors), and
answers a query in every column side by side:

- a caption query gives the top-k gallery images of ``old→old`` (old text tower), ``new→old`` per
  adapter (``adapter.encode_text`` on the OLD image vectors) and ``new→new`` (the bare new model on
  the new model's vectors of the same images) when the adapters' new model is known; when the query
  is one of the gallery's captions, the images it describes are marked as hits (✓);
- an image query gives the top-k captions in the same columns, hits marked when the image is a
  gallery image (pixel-identical).

``build_app`` lays the engine out as a ``gradio.Blocks`` page with a third tab showing an
evaluation report (``xbt.report.Report``: the table and its plot), given or computed on the
gallery on request. ``launch`` builds and serves it (inline in Jupyter); ``xbt app`` is the command.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .adapter import Adapter
from .datasets import load_dataset
from .embed import embed_images, embed_texts
from .encoders import CLIPEncoder
from .errors import XBTError
from .evaluate import evaluate
from .fit import fit
from .old_gallery import Gallery
from .report import Report

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page never calls home

OLD_OLD, NEW_NEW, HIT = "old→old", "new→new", "✓"


class SearchEngine:
    """Side-by-side search of one old gallery: old→old, new→old per adapter, new→new.

    Args:
        old: the OLD model (its text/image towers answer the old→old column).
        adapters: column name -> adapter (``xbt.fit`` / ``xbt.load_adapter`` result); at least one.
        gallery: the old gallery (``Gallery.build(old, dataset)`` or ``Gallery.load(folder)``).
        new_new: add the new→new column (embeds the gallery with the adapters' bare new model once).
        verbose: progress bars while embedding.
    """

    def __init__(self, old: CLIPEncoder, adapters: dict[str, Adapter], gallery: Gallery, new_new: bool = True,
                 verbose: bool = False) -> None:
        if not adapters:
            raise XBTError("give at least one adapter (column name -> adapter) to compare with old→old")
        if old.embed_dim != gallery.embed_dim:
            raise XBTError(f"the gallery holds {gallery.embed_dim}-d vectors but the old model {old.name} is {old.embed_dim}-d; "
                           "pass the old model that embedded the gallery")
        for name, a in adapters.items():
            if a.embed_dim != gallery.embed_dim:
                raise XBTError(f"adapter {name!r} maps into {a.embed_dim}-d, the gallery is {gallery.embed_dim}-d; "
                               "pass adapters made for the gallery's old model")
        self.old, self.adapters, self.gallery = old, dict(adapters), gallery
        self.new = next(iter(adapters.values())).new if new_new else None
        if self.new is not None:
            self.new_images = embed_images(self.new, gallery.dataset.images, verbose=verbose)
            self.new_captions = embed_texts(self.new, gallery.flat_captions, verbose=verbose)

    @property
    def columns(self) -> list[str]:
        """The column names, in page order."""
        return [OLD_OLD, *(f"new→old ({n})" for n in self.adapters), *([NEW_NEW] if self.new is not None else [])]

    def _encoders(self, modality: str) -> list[tuple[Callable, Any]]:
        """Per column: (query encoder, gallery vectors override or None)."""
        encode = "encode_text" if modality == "text" else "encode_image"
        new_gallery = None
        if self.new is not None:
            new_gallery = self.new_images if modality == "text" else self.new_captions
        return ([(getattr(self.old, encode), None)] + [(getattr(a, encode), None) for a in self.adapters.values()]
                + ([(getattr(self.new, encode), new_gallery)] if self.new is not None else []))

    def text_query(self, text: str, k: int = 5) -> dict[str, list[dict[str, Any]]]:
        """Column -> the top-``k`` images for caption ``text``: dicts of index, score, image, hit."""
        text = (text or "").strip()
        if not text:
            raise XBTError("type a caption to search the gallery's images")
        hits = self.gallery.owners_of_caption(text)
        out = {}
        for column, (encode, vectors) in zip(self.columns, self._encoders("text")):
            scores, ids = self.gallery.top_k(encode([text]), "images", k, vectors)
            out[column] = [{"index": int(i), "score": float(s), "image": self.gallery.dataset.images[int(i)], "hit": int(i) in hits}
                           for s, i in zip(scores[0], ids[0])]
        return out

    def image_query(self, image, k: int = 5) -> dict[str, list[dict[str, Any]]]:
        """Column -> the top-``k`` captions for PIL ``image``: dicts of index, score, caption, owner, hit."""
        if image is None:
            raise XBTError("upload an image to search the gallery's captions")
        image = image.convert("RGB")
        known = self.gallery.find_image(image)
        out = {}
        for column, (encode, vectors) in zip(self.columns, self._encoders("image")):
            scores, ids = self.gallery.top_k(encode([image]), "captions", k, vectors)
            out[column] = [{"index": int(j), "score": float(s), "caption": self.gallery.flat_captions[int(j)],
                            "owner": int(self.gallery.caption_owner[int(j)]),
                            "hit": known is not None and int(self.gallery.caption_owner[int(j)]) == known} for s, j in zip(scores[0], ids[0])]
        return out

    def evaluate(self) -> Report:
        """Evaluate every adapter on the gallery's dataset (old→old, new→old, new→new, flips)."""
        return evaluate(self.old, self.adapters, dataset=self.gallery.dataset, query_cost=False, verbose=False)


def caption_markdown(rows: list[dict[str, Any]]) -> str:
    """A numbered markdown list of caption results, hits bold with a ✓."""
    lines = [f"{i}. " + (f"{HIT} **{r['caption']}**" if r["hit"] else r["caption"]) + f" · image {r['owner']} · {r['score']:.3f}"
             for i, r in enumerate(rows, 1)]
    return "\n".join(lines) or "no results"


def report_view(report: Report | None) -> tuple[str, str | None]:
    """The report's markdown and the path of its plot (a temporary PNG), or a hint and ``None``."""
    if report is None:
        return "No report loaded: press **Evaluate on this gallery**, or start with `xbt app --report report.json`.", None
    path = Path(tempfile.mkdtemp(prefix="xbt-app-")) / "report.png"
    report.plot(path)
    return report.to_markdown(), str(path)


def build_app(engine: SearchEngine, report: Report | None = None, k: int = 5, title: str = "xbt search"):
    """The search page as a ``gradio.Blocks``: text→images, image→captions, and the evaluation tab."""
    try:
        import gradio as gr
    except ImportError as exc:
        raise XBTError("the search page needs Gradio: pip install 'xbt[app]'") from exc
    columns, ds = engine.columns, engine.gallery.dataset
    examples = [ds.captions[i][0] for i in range(min(3, len(ds)))]
    with gr.Blocks(title=title) as page:
        gr.Markdown(f"## {title}\nGallery: **{ds.name}/{ds.split}**, {ds.n_images} images, {ds.n_captions} captions, embedded by "
                    f"the old model **{engine.gallery.old_model}**. Columns: {', '.join(columns)}. {HIT} marks a hit: the image "
                    "a known caption describes, or a caption of an uploaded gallery image.")
        with gr.Tab("Text → images"):
            with gr.Row():
                query = gr.Textbox(label="Caption", placeholder=examples[0], elem_id="text-query", scale=4)
                go = gr.Button("Search images", variant="primary", elem_id="text-search", scale=1)
            gr.Examples(examples, inputs=query)
            status = gr.Markdown(elem_id="text-status")
            with gr.Row():
                galleries = [gr.Gallery(label=c, columns=3, height="auto", elem_id=f"images-{i}") for i, c in enumerate(columns)]
        with gr.Tab("Image → captions"):
            with gr.Row():
                image = gr.Image(type="pil", label="Image", sources=["upload"], elem_id="image-query", height=200)
                go_image = gr.Button("Search captions", variant="primary", elem_id="image-search")
            image_status = gr.Markdown(elem_id="image-status")
            with gr.Row():
                caption_cols = []
                for i, c in enumerate(columns):
                    with gr.Column():
                        gr.Markdown(f"**{c}**")
                        caption_cols.append(gr.Markdown(elem_id=f"captions-{i}"))
        with gr.Tab("Evaluation"):
            text, plot = report_view(report)
            run_eval = gr.Button("Evaluate on this gallery", elem_id="evaluate")
            report_md = gr.Markdown(text, elem_id="report")
            report_plot = gr.Image(plot, label="Recall@K", elem_id="report-plot")

        def on_text(q):
            try:
                result = engine.text_query(q, k)
            except XBTError as exc:
                return [str(exc)] + [[] for _ in columns]
            owners = engine.gallery.owners_of_caption(q)
            note = (f"{HIT} the query is a caption of image(s) {sorted(owners)}" if owners else "the query is not one of the gallery's captions")
            return [note] + [[(r["image"], f"{HIT} " * r["hit"] + f"#{r['index']} · {r['score']:.3f}") for r in result[c]] for c in columns]

        def on_image(im):
            try:
                result = engine.image_query(im, k)
            except XBTError as exc:
                return [str(exc)] + ["" for _ in columns]
            known = engine.gallery.find_image(im)
            note = f"{HIT} the image is gallery image {known}" if known is not None else "the image is not in the gallery"
            return [note] + [caption_markdown(result[c]) for c in columns]

        go.click(on_text, query, [status, *galleries])
        query.submit(on_text, query, [status, *galleries])
        go_image.click(on_image, image, [image_status, *caption_cols])
        image.upload(on_image, image, [image_status, *caption_cols])
        run_eval.click(lambda: report_view(engine.evaluate()), None, [report_md, report_plot])
    return page


def toy_adapters(old: CLIPEncoder, new: CLIPEncoder, verbose: bool = False) -> dict[str, Adapter]:
    """A stage-1 XBT adapter between the toy models (seconds to fit): the page's default column."""
    from . import toy

    return {"xbt stage 1": fit(old, new, toy.text_corpus(5000), verbose=verbose)}


def toy_setup(n_images: int | None = None, verbose: bool = False) -> tuple[CLIPEncoder, dict[str, Adapter], Gallery]:
    """The toy world's old model, a stage-1 XBT adapter and the toy test gallery (first ``n_images``)."""
    from . import toy

    old, new = toy.load_clips()
    return old, toy_adapters(old, new, verbose), Gallery.build(old, load_dataset("toy", limit=n_images), verbose=verbose)


def launch(engine: SearchEngine | None = None, report: Report | str | os.PathLike | None = None, k: int = 5,
           inline: bool | None = None, **launch_kwargs: Any):
    """Build and serve the page (inline in Jupyter); without an engine, the toy world's. Returns the ``gradio.Blocks``."""
    if engine is None:
        engine = SearchEngine(*toy_setup())
    if report is not None and not isinstance(report, Report):
        import json

        report = Report.from_dict(json.loads(Path(report).read_text(encoding="utf-8")))
    page = build_app(engine, report, k)
    page.launch(inline=inline, **launch_kwargs)
    return page


def app_arguments(p) -> None:
    """The ``xbt app`` flags."""
    p.add_argument("--old", default="xbt-toy-old", help="old model: toy name, open_clip name, hf:<id>, or a local-dir folder")
    p.add_argument("--old-pretrained", default=None)
    p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]FOLDER_OR_REPO",
                   help="adapter folder or Hub repo, repeatable (default with the toy models: a stage-1 adapter fitted at start)")
    p.add_argument("--new", default=None, help="new model (default: the one named in the first adapter's config)")
    p.add_argument("--new-pretrained", default=None)
    p.add_argument("--dataset", default="toy", help="gallery: toy | flickr30k | coco | nocaps (as xbt eval reads them)")
    p.add_argument("--split", default=None)
    p.add_argument("--root", default=None)
    p.add_argument("--limit", type=int, default=None, help="use only the first N gallery images")
    p.add_argument("--gallery", default=None, help="a folder written by Gallery.save (instead of --dataset)")
    p.add_argument("--save-gallery", default=None, help="save the gallery (images, captions, old vectors) to this folder")
    p.add_argument("--report", default=None, help="a report.json (xbt eval) for the Evaluation tab")
    p.add_argument("--k", type=int, default=5, help="results per column")
    p.add_argument("--no-new-new", action="store_true", help="no new→new column (skips embedding the gallery with the new model)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None)


def serve(args, load_model: Callable, load_adapters: Callable, new_from_adapter: Callable) -> int:
    """``xbt app``: load the models, adapters and gallery named by ``args`` and serve the page (the CLI passes its loaders)."""
    old = load_model(args.old, args.old_pretrained)
    if args.adapter:
        new = load_model(args.new, args.new_pretrained) if args.new else new_from_adapter(args.adapter[0].rpartition("=")[2])
        adapters = load_adapters(args.adapter, new, old, True)
    elif args.old == "xbt-toy-old" and args.new in (None, "xbt-toy-new"):
        adapters = toy_adapters(old, load_model("xbt-toy-new"), verbose=True)
    else:
        raise XBTError("give --adapter FOLDER (repeatable); only the toy models get a default adapter")
    gallery = (Gallery.load(args.gallery, old) if args.gallery
               else Gallery.build(old, load_dataset(args.dataset, split=args.split, root=args.root, limit=args.limit)))
    if args.save_gallery:
        print(f"saved the gallery to {gallery.save(args.save_gallery)}")
    engine = SearchEngine(old, adapters, gallery, new_new=not args.no_new_new, verbose=True)
    launch(engine, args.report, args.k, inline=False, server_name=args.host, server_port=args.port)
    return 0
