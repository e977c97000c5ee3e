"""The notebooks in examples/ run end to end, as a reader would run them (a real Jupyter kernel)."""

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "examples", "*.ipynb")))


def test_there_is_a_quickstart():
  assert os.path.join(REPO, "examples", "quickstart.ipynb") in NOTEBOOKS


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path):
  notebook = nbformat.read(path, as_version=4)
  # Executed in a scratch folder: whatever the notebook writes stays out of the repository.
  NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
  errors = [output for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.get("outputs", []) if output.get("output_type") == "error"]
  assert not errors, errors
  assert any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
