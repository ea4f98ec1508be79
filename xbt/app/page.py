"""The search page, ``xbt app``: see an upgrade at work on an old gallery (Gradio; ``pip install 'xbt[app]'``).

``build_app`` lays a ``SearchEngine`` (``xbt.app.engine``) out as a ``gradio.Blocks`` page with a
third tab showing an evaluation report (``xbt.evaluation.report.Report``: the table and its plot),
given or computed on the gallery on request. ``launch`` builds and serves it (inline in Jupyter);
``xbt app`` is the command.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..adapters.adapter import Adapter
from ..core.errors import XBTError
from ..data.retrieval import load_dataset
from ..evaluation.report import Report
from ..gallery.static import StaticGallery
from ..method.fit import fit
from ..models.encoders import CLIPEncoder
from .engine import HIT, SearchEngine

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page never calls home


def caption_markdown(rows: list[dict[str, Any]]) -> str:
    """A numbered markdown list of caption results, hits bold with a ✓."""
    lines = [
        f"{i}. "
        + (f"{HIT} **{r['caption']}**" if r["hit"] else r["caption"])
        + f" · image {r['owner']} · {r['score']:.3f}"
        for i, r in enumerate(rows, 1)
    ]
    return "\n".join(lines) or "no results"


def report_view(report: Report | None) -> tuple[str, str | None]:
    """The report's markdown and the path of its plot (a temporary PNG), or a hint and ``None``."""
    if report is None:
        return (
            "No report loaded: press **Evaluate on this gallery**, or start with `xbt app --report report.json`.",
            None,
        )
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
        gr.Markdown(
            f"## {title}\nGallery: **{ds.name}/{ds.split}**, {ds.n_images} images, {ds.n_captions} captions, "
            "embedded by "
            f"the old model **{engine.gallery.old_model}**. Columns: {', '.join(columns)}. {HIT} marks a hit: the "
            "image "
            "a known caption describes, or a caption of an uploaded gallery image."
        )
        with gr.Tab("Text → images"):
            with gr.Row():
                query = gr.Textbox(label="Caption", placeholder=examples[0], elem_id="text-query", scale=4)
                go = gr.Button("Search images", variant="primary", elem_id="text-search", scale=1)
            gr.Examples(examples, inputs=query)
            status = gr.Markdown(elem_id="text-status")
            with gr.Row():
                galleries = [
                    gr.Gallery(label=c, columns=3, height="auto", elem_id=f"images-{i}") for i, c in enumerate(columns)
                ]
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
            note = (
                f"{HIT} the query is a caption of image(s) {sorted(owners)}"
                if owners
                else "the query is not one of the gallery's captions"
            )
            return [note] + [
                [(r["image"], f"{HIT} " * r["hit"] + f"#{r['index']} · {r['score']:.3f}") for r in result[c]]
                for c in columns
            ]

        def on_image(im):
            try:
                result = engine.image_query(im, k)
            except XBTError as exc:
                return [str(exc)] + ["" for _ in columns]
            known = engine.gallery.find_image(im)
            note = (
                f"{HIT} the image is gallery image {known}" if known is not None else "the image is not in the gallery"
            )
            return [note] + [caption_markdown(result[c]) for c in columns]

        go.click(on_text, query, [status, *galleries])
        query.submit(on_text, query, [status, *galleries])
        go_image.click(on_image, image, [image_status, *caption_cols])
        image.upload(on_image, image, [image_status, *caption_cols])
        run_eval.click(lambda: report_view(engine.evaluate()), None, [report_md, report_plot])
    return page


def toy_adapters(old: CLIPEncoder, new: CLIPEncoder, verbose: bool = False) -> dict[str, Adapter]:
    """A stage-1 XBT adapter between the toy models (seconds to fit): the page's default column."""
    from .. import toy

    return {"xbt stage 1": fit(old, new, toy.text_corpus(5000), verbose=verbose)}


def toy_setup(
    n_images: int | None = None, verbose: bool = False
) -> tuple[CLIPEncoder, dict[str, Adapter], StaticGallery]:
    """The toy world's old model, a stage-1 XBT adapter and the toy test gallery (first ``n_images``)."""
    from .. import toy

    old, new = toy.load_clips()
    return (
        old,
        toy_adapters(old, new, verbose),
        StaticGallery.build(old, load_dataset("toy", limit=n_images), verbose=verbose),
    )


def launch(
    engine: SearchEngine | None = None,
    report: Report | str | os.PathLike | None = None,
    k: int = 5,
    inline: bool | None = None,
    **launch_kwargs: Any,
):
    """Build and serve the page (inline in Jupyter); without an engine, the toy world's. Returns the
    ``gradio.Blocks``."""
    if engine is None:
        engine = SearchEngine(*toy_setup())
    if report is not None and not isinstance(report, Report):
        import json

        report = Report.from_dict(json.loads(Path(report).read_text(encoding="utf-8")))
    page = build_app(engine, report, k)
    page.launch(inline=inline, **launch_kwargs)
    return page
