"""Every notebook executes under papermill in the smoke preset (nbval-lax runs them too, from
`make test`, except the one tests/test_browser.py runs from JupyterLab). Outputs go to a temporary folder; the
committed notebooks stay output-free."""
import json
from pathlib import Path

import papermill
import pytest
from test_browser import NOTEBOOK as BROWSER_NOTEBOOK

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_in_smoke(path, tmp_path):
    figures = tmp_path / "figures"
    papermill.execute_notebook(str(path), str(tmp_path / path.name), cwd=str(path.parent), progress_bar=False,
                               parameters={"preset": "smoke", "figures_dir": str(figures)})
    results = list(figures.rglob("results.json")) + list(figures.rglob("metrics.json"))
    assert results, "the notebook wrote no results file"
    assert json.loads(results[0].read_text())["preset"] == "smoke"
    assert list(figures.rglob("*.png")), "the notebook wrote no figure"


def test_nbval_leaves_out_only_the_browser_tests_notebook():
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    assert f"NBVAL_NOTEBOOKS := $(filter-out notebooks/{BROWSER_NOTEBOOK},$(NOTEBOOKS))" in makefile
    assert "pytest -q tests $(NBVAL_NOTEBOOKS) --nbval-lax" in makefile


def test_committed_notebooks_carry_no_outputs():
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path.name
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]), path.name
