"""The quickstart notebook runs top to bottom on the toy world."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "xbt stage 1+2" in text and "old→old" in text
    assert not list(tmp_path.iterdir())  # the notebook writes its plot and adapter to a temporary folder, not here
    last = nb.cells[-1]["outputs"][-1]["data"]["text/plain"]
    assert last == "True"
