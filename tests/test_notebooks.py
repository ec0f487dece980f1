"""Every notebook in notebooks/ runs top to bottom (nbclient, the venv's kernel), as a user would run it."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ALL = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# experiments.ipynb reads the MLflow store of a demo run: tests/pipelines/test_demo.py executes it on its own run
NOTEBOOKS = [p for p in ALL if p.name != "experiments.ipynb"]


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "notebooks/ holds no .ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, tmp_path: Path) -> None:
    execute_notebook(path, tmp_path)


def execute_notebook(path: Path, cwd: Path) -> nbformat.NotebookNode:
    """Run a committed notebook (outputs stripped) top to bottom in ``cwd``; returns it with its outputs."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{path.name}: commit notebooks with outputs stripped"
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb
