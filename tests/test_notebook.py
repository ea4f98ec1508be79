"""The quickstart notebook runs top to bottom on the toy world, and is stored with the outputs of that run."""

import ast
from pathlib import Path

import nbformat

from scripts.notebooks import EXECUTED, clean, code_sha256, execute, problems, scrub, shows_output

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def _outputs(nb):
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def test_quickstart_notebook_executes():
    nb = execute(NOTEBOOK)  # in an empty temporary folder; refused if the notebook writes anything there
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "xbt stage 1+2" in text and "old→old" in text and "ceiling (frozen old gallery)" in text
    # the image grids, the two flip figures and the ΔR@K plot are drawn (besides the report's plot)
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 5
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "the upgrade fixed" in printed and "PFR" in printed
    assert "no ceiling measured" not in printed
    # stage 2 took the stored OLD pair vectors and the fitted stage 1, so stage 1 ran once
    assert "{'images': 'given', 'captions': 'given'}" in printed
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert code.count("xbt.fit(old, new, texts, verbose=False)") == 1 and "stage1=stage1" in code
    html = "".join(str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "<iframe" in html  # the search page renders inline
    assert "search page closed: True" in printed  # and the last cell stops its server
    saved = next(c for c in nb.cells if c.cell_type == "code" and "save_pretrained" in c.source)
    assert saved.outputs[-1]["data"]["text/plain"] == "True"
    # the stored copy came from a run like this one: the same outputs, cell by cell, in kind
    nb, stored = clean(nb), nbformat.read(NOTEBOOK, as_version=4)
    kinds = [[(o.output_type, sorted(o.get("data", {}))) for o in c.get("outputs", [])] for c in stored.cells]
    assert kinds == [[(o.output_type, sorted(o.get("data", {}))) for o in c.get("outputs", [])] for c in nb.cells]


def test_the_stored_quickstart_has_its_outputs():
    """Viewed on GitHub or the Hub, the notebook shows what it does: python -m scripts.notebooks stores it so."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert problems(nb, NOTEBOOK.name) == []
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs for c in code if shows_output(c.source))
    assert not [o for o in _outputs(nb) if o.get("output_type") == "error"]
    assert set(nb.metadata) == {"kernelspec", "language_info", "xbt"}  # no Python version, no widget state
    assert not [c for c in nb.cells if "execution" in c.metadata]  # no timings


def test_the_checks_catch_a_notebook_stored_without_outputs_or_edited_since():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    stripped = nbformat.from_dict(nb)
    for cell in stripped.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    assert any("stored without outputs" in p for p in problems(stripped))
    edited = nbformat.read(NOTEBOOK, as_version=4)
    next(c for c in edited.cells if c.cell_type == "code").source += "\nprint('new')"
    assert code_sha256(edited) != code_sha256(nb)
    assert any("code changed" in p for p in problems(edited))
    failed = nbformat.read(NOTEBOOK, as_version=4)
    failed.cells[1].outputs.append(nbformat.v4.new_output("error", ename="ValueError", evalue="x", traceback=[]))
    assert any("stored an error" in p for p in problems(failed))
    assert not shows_output("x = 1") and shows_output("x") and shows_output("plt.show()")
    assert scrub(f"{Path(__file__).resolve().parents[1]}/xbt/a.py and /tmp/ipykernel_12/345.py") == (
        "<repo>/xbt/a.py and <cell>"
    )


def test_the_other_notebooks_are_stored_without_outputs_and_the_real_models_one_parses():
    for path in NOTEBOOK.parent.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        if path.name in EXECUTED:
            continue
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{path.name}: not executed by scripts/notebooks.py (GPU + internet): strip its outputs"
                )
    real = nbformat.read(NOTEBOOK.parent / "real_models.ipynb", as_version=4)
    source = "\n".join(c.source for c in real.cells if c.cell_type == "code")
    ast.parse(source)  # not executed in CI (GPU + internet): at least it is valid Python
    assert 'xbt.load_clip("ViT-L-14"' in source and 'xbt.load_clip("ViT-B-32"' in source and "flickr30k" in source
