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

#: the gallery images whose first captions (text tab) and pixels (image tab) are the page's examples
EXAMPLES = (0, 1, 2)
#: the toy page's adapters: the quickstart notebook's recipe (stage 1 on 5,000 captions; stage 2 on
#: 1,000 pairs for 3 epochs on top of that same stage 1: about 2 s on 2 CPU cores). With 300 or 500
#: pairs the guard kept stage 1 or image queries fell below it, and the stage-1+2 column showed nothing new.
TOY_TEXTS, TOY_PAIRS, TOY_STAGE2 = 5_000, 1_000, {"epochs": 3}


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


def example_images(engine: SearchEngine, indices: tuple[int, ...] = EXAMPLES) -> list[str]:
    """A few of the gallery's own images as PNG files (a temporary folder) for the image tab's examples.

    Files, not PIL images: every Gradio version takes file paths as examples, and PNG keeps the pixels, so
    an example is found in the gallery (``StaticGallery.find_image``) and its own captions are marked.
    """
    folder = Path(tempfile.mkdtemp(prefix="xbt-app-"))
    paths = []
    for i in indices:
        if i < len(engine.gallery.dataset):
            path = folder / f"gallery-image-{i}.png"
            engine.gallery.dataset.images[i].save(path)
            paths.append(str(path))
    return paths


def text_results(engine: SearchEngine, query: str, k: int) -> list:
    """The text tab's outputs for ``query``: a status line, then per column (image, label) pairs."""
    try:
        result = engine.text_query(query, k)
    except XBTError as exc:
        return [str(exc)] + [[] for _ in engine.columns]
    owners = engine.gallery.owners_of_caption(query)
    note = (
        f"{HIT} the query is a caption of image(s) {sorted(owners)}"
        if owners
        else "the query is not one of the gallery's captions"
    )
    return [note] + [
        [(r["image"], f"{HIT} " * r["hit"] + f"#{r['index']} · {r['score']:.3f}") for r in result[c]]
        for c in engine.columns
    ]


def image_results(engine: SearchEngine, image, k: int) -> list[str]:
    """The image tab's outputs for PIL ``image``: a status line, then per column a markdown caption list."""
    try:
        result = engine.image_query(image, k)
    except XBTError as exc:
        return [str(exc)] + ["" for _ in engine.columns]
    known = engine.gallery.find_image(image)
    note = f"{HIT} the image is gallery image {known}" if known is not None else "the image is not in the gallery"
    return [note] + [caption_markdown(result[c]) for c in engine.columns]


def build_app(engine: SearchEngine, report: Report | None = None, k: int = 5, title: str = "xbt search"):
    """The search page as a ``gradio.Blocks``: text→images, image→captions, and the evaluation tab.

    It opens with the gallery's first caption and first image already searched (``page.load``), so every
    column shows results before anything is typed; the examples under each query (captions, and the
    gallery's own images) search when clicked.
    """
    try:
        import gradio as gr
    except ImportError as exc:
        raise XBTError("the search page needs Gradio: pip install 'xbt[app]'") from exc
    columns, ds = engine.columns, engine.gallery.dataset
    shown = [i for i in EXAMPLES if i < len(ds)]
    examples, images = [ds.captions[i][0] for i in shown], example_images(engine, tuple(shown))

    def on_text(q):
        return text_results(engine, q, k)

    def on_image(im):
        return image_results(engine, im, k)

    with gr.Blocks(title=title) as page:
        gr.Markdown(
            f"## {title}\nGallery: **{ds.name}/{ds.split}**, {ds.n_images} images, {ds.n_captions} captions, "
            f"embedded by the old model **{engine.gallery.old_model}**. Columns: {', '.join(columns)}. "
            f"{HIT} marks a hit: the image a known caption describes, or a caption of an uploaded gallery image."
        )
        with gr.Tab("Text → images"):
            # the results are made first (not rendered) so the examples can name them as their outputs
            status = gr.Markdown(elem_id="text-status", render=False)
            galleries = [
                gr.Gallery(label=c, columns=3, height="auto", elem_id=f"images-{i}", render=False)
                for i, c in enumerate(columns)
            ]
            with gr.Row():
                query = gr.Textbox(
                    value=examples[0], label="Caption", placeholder=examples[0], elem_id="text-query", scale=4
                )
                go = gr.Button("Search images", variant="primary", elem_id="text-search", scale=1)
            gr.Examples(
                examples,
                inputs=query,
                outputs=[status, *galleries],
                fn=on_text,
                run_on_click=True,
                elem_id="text-examples",
            )
            status.render()
            with gr.Row():
                for gallery in galleries:
                    gallery.render()
        with gr.Tab("Image → captions"):
            image_status = gr.Markdown(elem_id="image-status", render=False)
            caption_cols = [gr.Markdown(elem_id=f"captions-{i}", render=False) for i in range(len(columns))]
            with gr.Row():
                image = gr.Image(
                    value=images[0], type="pil", label="Image", sources=["upload"], elem_id="image-query", height=200
                )
                go_image = gr.Button("Search captions", variant="primary", elem_id="image-search")
            gr.Examples(
                images,
                inputs=image,
                outputs=[image_status, *caption_cols],
                fn=on_image,
                run_on_click=True,
                label=f"Gallery images {', '.join(map(str, shown))}",
                elem_id="image-examples",
            )
            image_status.render()
            with gr.Row():
                for c, markdown in zip(columns, caption_cols):
                    with gr.Column():
                        gr.Markdown(f"**{c}**")
                        markdown.render()
        with gr.Tab("Evaluation"):
            text, plot = report_view(report)
            run_eval = gr.Button("Evaluate on this gallery", elem_id="evaluate")
            report_md = gr.Markdown(text, elem_id="report")
            report_plot = gr.Image(plot, label="Recall@K", elem_id="report-plot")

        for event in (go.click, query.submit, page.load):  # page.load: the prefilled caption's results
            event(on_text, query, [status, *galleries])
        for event in (go_image.click, image.upload, page.load):
            event(on_image, image, [image_status, *caption_cols])
        run_eval.click(lambda: report_view(engine.evaluate()), None, [report_md, report_plot])
    return page


def toy_adapters(old: CLIPEncoder, new: CLIPEncoder, verbose: bool = False) -> dict[str, Adapter]:
    """The page's default columns between the toy models: XBT stage 1 and stage 1+2 (merged).

    Stage 1+2 is what an upgrade ships, stage 1 shows what the pairs add; stage 2 reuses the stage-1
    head (``fit(..., stage1=)``) instead of training it again, so the pair add costs seconds at startup.
    """
    from .. import toy

    texts = toy.text_corpus(TOY_TEXTS)
    stage1 = fit(old, new, texts, verbose=verbose)
    stage2 = fit(old, new, texts, pairs=toy.pairs(TOY_PAIRS), stage1=stage1, stage2=TOY_STAGE2, verbose=verbose)
    return {"xbt stage 1": stage1, "xbt stage 1+2": stage2.merge()}


def toy_setup(
    n_images: int | None = None, verbose: bool = False
) -> tuple[CLIPEncoder, dict[str, Adapter], StaticGallery]:
    """The toy world's old model, its XBT adapters (``toy_adapters``) and the toy test gallery (first ``n_images``)."""
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
