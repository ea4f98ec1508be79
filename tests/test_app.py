"""The search page: the engine on the toy world, a saved gallery, and the page driven in a real headless browser."""

import socket
from pathlib import Path

import pytest

import xbt
from xbt import XBTError, toy
from xbt.app.engine import HIT, SearchEngine
from xbt.app.page import build_app, caption_markdown
from xbt.data.retrieval import load_dataset
from xbt.evaluation.report import NEW_NEW, OLD_OLD
from xbt.gallery.static import Gallery

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
K = 5
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def engine(captions_400):
    old, new = toy.load_clips(device="cpu")
    adapters = {
        "xbt stage 1": xbt.fit(old, new, captions_400, epochs=2, verbose=False),
        "procrustes": xbt.fit(old, new, captions_400, method="procrustes", verbose=False),
    }
    gallery = Gallery.build(old, load_dataset("toy", limit=40), verbose=False)
    return SearchEngine(old, adapters, gallery)


def test_every_column_answers_and_hits_are_the_described_images(engine):
    assert engine.columns == [OLD_OLD, "new→old (xbt stage 1)", "new→old (procrustes)", NEW_NEW]
    ds = engine.gallery.dataset
    caption = ds.captions[7][1]
    result = engine.text_query(caption, K)
    assert list(result) == engine.columns
    for _column, rows in result.items():
        assert len(rows) == K and [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
        assert all(r["hit"] == (r["index"] in engine.gallery.owners_of_caption(caption)) for r in rows)
    # the new->old column is the adapter's query on the OLD image vectors
    q = engine.adapters["xbt stage 1"].encode_text([caption])
    best = int((q @ engine.gallery.old_images.T).argmax())
    assert result["new→old (xbt stage 1)"][0]["index"] == best
    assert not any(r["hit"] for rows in engine.text_query("a caption nobody wrote", K).values() for r in rows)
    by_image = engine.image_query(ds.images[7], K)
    for _column, rows in by_image.items():
        assert len(rows) == K and all(r["hit"] == (r["owner"] == 7) for r in rows)
        assert all(r["caption"] == engine.gallery.flat_captions[r["index"]] for r in rows)
    lines = caption_markdown(by_image[OLD_OLD]).splitlines()
    assert [(f"**{HIT}" in line or f"{HIT} **" in line) for line in lines] == [r["hit"] for r in by_image[OLD_OLD]]
    with pytest.raises(XBTError, match="type a caption"):
        engine.text_query("  ", K)


def test_a_saved_gallery_serves_the_same_results(engine, tmp_path):
    folder = engine.gallery.save(tmp_path / "gallery")
    loaded = Gallery.load(folder, engine.old)
    assert loaded.dataset.captions == engine.gallery.dataset.captions
    again = SearchEngine(engine.old, engine.adapters, loaded)
    caption = engine.gallery.dataset.captions[3][0]
    for column, rows in again.text_query(caption, K).items():
        assert [r["index"] for r in rows] == [r["index"] for r in engine.text_query(caption, K)[column]]
    assert loaded.find_image(engine.gallery.dataset.images[3]) == 3
    with pytest.raises(XBTError, match="embedded by"):
        Gallery.load(folder, engine.adapters["xbt stage 1"].new)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _image_labels(engine, caption):
    """The labels the text tab shows for ``caption``, per column."""
    expected = engine.text_query(caption, K)
    return [[f"{HIT} " * r["hit"] + f"#{r['index']} · {r['score']:.3f}" for r in expected[c]] for c in engine.columns]


def _wait_for_images(tab, engine, caption):
    """Wait until every column shows ``caption``'s results (labels in order, their images drawn)."""
    expected = _image_labels(engine, caption)
    tab.wait_for_function(
        "expected => expected.every((labels, i) => JSON.stringify([...document.querySelectorAll(`#images-${i} "
        ".caption-label`)].map(e => e.innerText)) === JSON.stringify(labels))",
        arg=expected,
        timeout=120_000,
    )
    for i in range(len(engine.columns)):
        assert tab.locator(f"#images-{i} img").count() >= K


def _assert_captions(tab, engine, image):
    """Every column lists ``image``'s caption results in order, its own captions marked."""
    expected = engine.image_query(image, K)
    for i, column in enumerate(engine.columns):
        want = [
            f"{HIT} " * r["hit"] + f"{r['caption']} · image {r['owner']} · {r['score']:.3f}" for r in expected[column]
        ]
        # the page's list items, in order (innerText drops the list numbers and the bold marks)
        tab.wait_for_function(
            "([i, want]) => JSON.stringify((document.querySelector(`#captions-${i}`)?.innerText || '').split('\\n')"
            ".map(l => l.trim()).filter(l => l)) === JSON.stringify(want)",
            arg=[i, want],
            timeout=60_000,
        )
        assert (HIT in tab.inner_text(f"#captions-{i}")) == any(r["hit"] for r in expected[column])


def test_the_page_in_a_headless_browser(engine, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    port = _free_port()
    page = build_app(engine, k=K)
    page.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, inline=False)
    ARTIFACTS.mkdir(exist_ok=True)
    ds = engine.gallery.dataset
    query_image = tmp_path / "query.png"
    ds.images[11].save(query_image)
    caption = ds.captions[11][0]
    try:
        with sync_playwright() as p:  # a fresh profile (user data dir) per run
            browser = p.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=BROWSER_ARGS
            )
            tab = browser.new_page()
            tab.goto(f"http://127.0.0.1:{port}/")
            # on load: the first caption prefilled and already searched, every column filled
            assert tab.input_value("#text-query textarea") == ds.captions[0][0]
            tab.wait_for_function(
                "(document.querySelector('#text-status')?.innerText || '').includes('[0]')", timeout=120_000
            )
            _wait_for_images(tab, engine, ds.captions[0][0])
            tab.screenshot(path=str(ARTIFACTS / "app_on_load.png"), full_page=True)
            # a known caption: image results in every column, the described image marked
            tab.fill("#text-query textarea", caption)
            tab.click("#text-search")
            tab.wait_for_function(
                "(document.querySelector('#text-status')?.innerText || '').includes('[11]')", timeout=120_000
            )
            _wait_for_images(tab, engine, caption)
            shot = ARTIFACTS / "app_text_query.png"
            tab.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            # the image tab opens on gallery image 0, searched; a gallery-image example searches when clicked
            tab.get_by_role("tab", name="Image → captions").click()
            tab.wait_for_function(
                "(document.querySelector('#image-status')?.innerText || '').includes('gallery image 0')",
                timeout=120_000,
            )
            _assert_captions(tab, engine, ds.images[0])
            tab.locator("#image-examples img").nth(1).click()
            tab.wait_for_function(
                "(document.querySelector('#image-status')?.innerText || '').includes('gallery image 1')",
                timeout=120_000,
            )
            _assert_captions(tab, engine, ds.images[1])
            # an uploaded gallery image: captions back in every column, its own captions marked
            tab.set_input_files("#image-query input[type=file]", str(query_image))
            tab.wait_for_function(
                "(document.querySelector('#image-status')?.innerText || '').includes('gallery image 11')",
                timeout=120_000,
            )
            _assert_captions(tab, engine, ds.images[11])
            shot = ARTIFACTS / "app_image_query.png"
            tab.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            # the evaluation tab computes the report on the gallery and shows the table and the plot
            tab.get_by_role("tab", name="Evaluation").click()
            tab.click("#evaluate")
            tab.wait_for_function(
                "(document.querySelector('#report')?.innerText || '').includes('new→new')", timeout=120_000
            )
            tab.wait_for_selector("#report-plot img", timeout=60_000)
            assert "procrustes" in tab.inner_text("#report")
            tab.screenshot(path=str(ARTIFACTS / "app_report.png"), full_page=True)
            browser.close()
    finally:
        page.close()


def test_xbt_app_command_loads_adapters_and_galleries(engine, tmp_path, monkeypatch):
    import xbt.cli.app as app  # the command serves through the launch it imported
    from xbt.cli import main as cli_main

    served = []
    monkeypatch.setattr(app, "launch", lambda eng, report, k, **kw: served.append((eng, report, k, kw)))
    saved = engine.adapters["xbt stage 1"].save_pretrained(tmp_path / "adapter")
    assert (
        cli_main(
            ["app", "--adapter", f"mine={saved}", "--limit", "12", "--save-gallery", str(tmp_path / "g"), "--k", "3"]
        )
        == 0
    )
    eng, report, k, kw = served[-1]
    assert eng.columns == [OLD_OLD, "new→old (mine)", NEW_NEW] and len(eng.gallery) == 12 and k == 3
    assert kw["server_name"] == "127.0.0.1"
    # the saved gallery serves again without re-embedding it; a report.json fills the Evaluation tab
    report_json = tmp_path / "report.json"
    report_json.write_text(eng.evaluate().to_json())
    assert (
        cli_main(
            [
                "app",
                "--adapter",
                str(saved),
                "--gallery",
                str(tmp_path / "g"),
                "--no-new-new",
                "--report",
                str(report_json),
            ]
        )
        == 0
    )
    eng2, report2, _, _ = served[-1]
    assert eng2.columns == [OLD_OLD, "new→old (xbt)"] and eng2.gallery.dataset.captions == eng.gallery.dataset.captions
    assert report2 == str(report_json)
    caption = eng.gallery.dataset.captions[5][0]
    assert [r["index"] for r in eng2.text_query(caption, 3)["new→old (xbt)"]] == [
        r["index"] for r in eng.text_query(caption, 3)["new→old (mine)"]
    ]


def test_xbt_app_defaults_to_stage_1_and_1_plus_2_and_passes_share(monkeypatch):
    """Without --adapter the toy page shows XBT stage 1 and stage 1+2; stage 2 reuses the stage-1 head."""
    import xbt.app.page as page_module
    import xbt.cli.app as app
    from xbt.cli import main as cli_main

    served, fits = [], []

    def recording_fit(*args, **kwargs):
        fits.append(kwargs)
        adapter = xbt.fit(*args, **kwargs)
        fits[-1]["result"] = adapter
        return adapter

    monkeypatch.setattr(page_module, "fit", recording_fit)
    monkeypatch.setattr(app, "launch", lambda eng, report, k, **kw: served.append((eng, kw)))
    assert cli_main(["app", "--limit", "12", "--no-new-new", "--share"]) == 0
    eng, kw = served[-1]
    assert eng.columns == [OLD_OLD, "new→old (xbt stage 1)", "new→old (xbt stage 1+2)"]
    assert kw["share"] is True
    assert [("pairs" in f, f.get("stage1") is fits[0]["result"]) for f in fits] == [(False, False), (True, True)]
    assert eng.adapters["xbt stage 1"] is fits[0]["result"]


@pytest.mark.parametrize("flag", [["--report", "/nope.json"], ["--gallery", "/nope"]])
def test_xbt_app_refuses_a_missing_file_in_one_line(flag, capsys):
    from xbt.cli import main as cli_main

    assert cli_main(["app", *flag]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"xbt app: error: {flag[0]} /nope") and "Traceback" not in err


def test_xbt_app_help_describes_every_flag():
    import argparse

    from xbt.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["app"]
    assert sub.description and "search page" in sub.description
    for action in sub._actions:
        assert action.help, action.option_strings
        if action.nargs != 0:  # a flag that takes a value names the value (TAG), not argparse's dest (OLD_PRETRAINED)
            assert action.metavar, action.option_strings
    assert "--share" in sub.format_help()
