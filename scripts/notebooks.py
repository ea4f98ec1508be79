"""Execute the notebooks and store them with their outputs, so they read on GitHub or the Hub before anyone runs them.

    python -m scripts.notebooks            # execute notebooks/quickstart.ipynb and write it back, outputs included
    python -m scripts.notebooks --check    # exit 1 if a stored notebook lacks outputs or is older than its code

(``python scripts/notebooks.py`` works too.) Each notebook runs top to bottom in a fresh kernel (nbclient), in an
empty temporary folder as its working directory, and is written back atomically (``xbt.core.files.write_text``).
What would make a re-run's diff noisy or tie the file to this machine is left out: no execution timings, the
notebook metadata only names the kernel and the language (not its version), absolute paths in text outputs
(the checkout, the temporary folders, the kernel's cell files) are replaced by placeholders, and tqdm's warning
that ipywidgets is missing (``DROP``) is removed. The notebook's
metadata records a hash of its code cells (``xbt.code_sha256``), so ``--check`` and ``tests/test_notebook.py``
tell a notebook edited since it last ran.

``notebooks/real_models.ipynb`` needs a GPU and the internet (open_clip weights, Flickr30k): it is not executed
here and stays stored without outputs.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
#: the notebooks this script executes and stores with outputs (the others need a GPU and the internet)
EXECUTED = ("quickstart.ipynb",)
#: the metadata key holding what the script records (the hash of the code cells that produced the outputs)
META = "xbt"
#: outputs that tie the notebook to one machine, and what replaces them
SCRUB = [
    (re.compile(r"/tmp/ipykernel_\d+/\d+\.py"), "<cell>"),  # where ipykernel files each cell (warnings name it)
    (re.compile(re.escape(str(ROOT))), "<repo>"),
    (re.compile(r"(?:/private)?(?:/var/folders/[^\s'\"]+|/tmp)/tmp[\w.-]+"), "<tmp>"),  # tempfile.mkdtemp()
]
#: stderr lines about the environment that ran the script, not the notebook: tqdm's IProgress warning shows only
#: where ipywidgets is missing (``pip install -e ".[notebook]"`` brings it), so the stored notebook leaves it out
DROP = re.compile(r"^.*TqdmWarning: IProgress not found.*\n(?:\s+from \.autonotebook import .*\n)?", re.MULTILINE)
#: a text output may not hold these (what SCRUB missed)
MACHINE_SPECIFIC = re.compile(r"/home/|/Users/|/root/|/tmp/|\b[A-Z]:\\")


def code_sha256(nb) -> str:
    """A hash of the notebook's code cells: changes when code changes, not when outputs or markdown do."""
    code = "\n\0".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def shows_output(source: str) -> bool:
    """Whether a code cell prints or displays: a print/display/show call, or a last line that is an expression."""
    try:
        body = ast.parse(source).body
    except SyntaxError:  # IPython syntax (magics): count it as showing something
        return True
    calls = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(ast.Module(body=body, type_ignores=[]))
        if isinstance(node, ast.Call)
    }
    return bool(body) and (isinstance(body[-1], ast.Expr) or bool(calls & {"print", "display", "show", "launch"}))


def scrub(text: str) -> str:
    """``text`` with this machine's paths replaced by placeholders (``SCRUB``)."""
    for pattern, placeholder in SCRUB:
        text = pattern.sub(placeholder, text)
    return text


def _texts(output):
    """(container, key) of every text in an output: a stream's text, and text/* and JSON-free mime data."""
    if output.get("output_type") == "stream":
        yield output, "text"
    elif output.get("output_type") == "error":
        yield output, "evalue"
    for mime in list(output.get("data", {})):
        if mime.startswith("text/"):
            yield output["data"], mime


def clean(nb):
    """Make the executed notebook stable: scrubbed text outputs, no timings, kernel name only, the code hash."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        for output in cell.outputs:
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                output["text"] = DROP.sub("", output["text"])
        cell.outputs = [o for o in cell.outputs if o.get("output_type") != "stream" or o.get("text")]
        for output in cell.outputs:
            for holder, key in _texts(output):
                value = holder[key]
                holder[key] = scrub(value) if isinstance(value, str) else [scrub(v) for v in value]
    language = nb.metadata.get("language_info", {}).get("name", "python")
    nb.metadata = nbformat.from_dict(
        {
            "kernelspec": nb.metadata.get("kernelspec", {"display_name": "Python 3", "language": language}),
            "language_info": {"name": language},
            META: {"code_sha256": code_sha256(nb), "executed_by": "python -m scripts.notebooks"},
        }
    )
    return nb


def execute(path: Path, timeout: int = 600, kernel: str = "python3"):
    """Run the notebook at ``path`` top to bottom in a fresh kernel inside an empty temporary folder."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="xbt-notebook-") as cwd:
        client = NotebookClient(
            nb, timeout=timeout, kernel_name=kernel, record_timing=False, resources={"metadata": {"path": cwd}}
        )
        client.execute()
        left = sorted(p.name for p in Path(cwd).iterdir())
    if left:
        raise SystemExit(f"{path.name} wrote {left} into its working directory; write to a temporary folder")
    return nb


def problems(nb, name: str = "notebook") -> list[str]:
    """What is wrong with a notebook stored with its outputs (empty when nothing is)."""
    found = []
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    if nb.metadata.get(META, {}).get("code_sha256") != code_sha256(nb):
        found.append(f"{name}: its code changed since it was executed (or it never was): python -m scripts.notebooks")
    counts = [cell.execution_count for cell in code if cell.execution_count is not None]
    if counts != list(range(1, len(counts) + 1)):
        found.append(f"{name}: execution counts {counts} are not one run top to bottom: python -m scripts.notebooks")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if shows_output(cell.source) and not cell.outputs:
            found.append(f"{name}: cell {i} prints or displays but is stored without outputs")
        for output in cell.outputs:
            if output.get("output_type") == "error":
                found.append(f"{name}: cell {i} stored an error: {output.get('ename')}: {output.get('evalue')}")
            for holder, key in _texts(output):
                text = holder[key] if isinstance(holder[key], str) else "".join(holder[key])
                if "<iframe" not in text and MACHINE_SPECIFIC.search(text):
                    found.append(f"{name}: cell {i} shows a path of this machine: {MACHINE_SPECIFIC.search(text)[0]}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.notebooks", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "notebooks",
        nargs="*",
        metavar="NOTEBOOK",
        help=f"notebooks to execute (default: {', '.join(EXECUTED)} in notebooks/)",
    )
    parser.add_argument(
        "--check", action="store_true", help="execute nothing: exit 1 if a stored notebook lacks outputs or is stale"
    )
    parser.add_argument("--timeout", type=int, default=600, metavar="SECONDS", help="per cell (default: 600)")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or [NOTEBOOKS / name for name in EXECUTED]
    if args.check:
        found = [p for path in paths for p in problems(nbformat.read(path, as_version=4), path.name)]
        print("\n".join(found) or f"ok: {', '.join(p.name for p in paths)} stored with current outputs")
        return 1 if found else 0
    from xbt.core.files import write_text

    for path in paths:
        nb = clean(execute(path, args.timeout))
        nbformat.validate(nb)
        found = problems(nb, path.name)
        if found:
            print("\n".join(found), file=sys.stderr)
            return 1
        write_text(path, nbformat.writes(nb) + "\n")
        print(f"wrote {path} ({sum(len(c.get('outputs', [])) for c in nb.cells)} outputs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
