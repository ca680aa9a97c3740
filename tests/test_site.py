"""The static course site: every executed notebook becomes a page, indexed in course order."""
import nbformat
import pytest

from fedalign_lite.errors import DataError
from fedalign_lite.experiments.site import build_site


def test_site_renders_notebooks_in_course_order(tmp_path):
    for name, heading in (("01_b.ipynb", "# 01 · Second"), ("00_a.ipynb", "# 00 · First")):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(heading),
                                             nbformat.v4.new_code_cell("1 + 1", outputs=[nbformat.v4.new_output(
                                                 "execute_result", {"text/plain": "2"}, execution_count=1)])])
        nbformat.write(nb, tmp_path / name)
    pages = build_site(tmp_path, tmp_path / "site")
    index = (tmp_path / "site" / "index.html").read_text()
    assert [p.name for p in pages] == ["index.html", "00_a.html", "01_b.html"]
    assert index.index("00_a.html") < index.index("01_b.html") and "00 · First" in index
    assert "2" in (tmp_path / "site" / "00_a.html").read_text()


def test_no_executed_notebooks_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="make figures"):
        build_site(tmp_path, tmp_path / "site")
