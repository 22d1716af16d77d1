"""The quickstart notebook runs top to bottom and shows what it says it shows."""

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    results = dict((name, (float(a), float(b))) for name, a, b in re.findall(r"(\w+): baseline (-?[\d.]+) -> best (-?[\d.]+)", text))
    assert set(results) == {"CoSyNE", "SNES", "Sep_CMA_ES"}
    for baseline, best in results.values():
        assert best > baseline
    images = [o for o in outputs if o.get("output_type") == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 2  # the image grid and the fitness curves
    assert not [o for o in outputs if o.get("output_type") == "error"]
