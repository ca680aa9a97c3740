"""The course as a static site readers can browse without running anything: every executed notebook
rendered to HTML (nbconvert), and an index page in course order.

    python -m fedalign_lite.experiments.site --notebooks build/notebooks --out build/site
"""
from __future__ import annotations

import argparse
import html
import re
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from fedalign_lite.errors import DataError


def title(nb) -> str:
    """The notebook's first Markdown heading, without its leading #s and numbering marks."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#+\s*(.+)$", cell.source, flags=re.M)
            if m:
                return m.group(1).strip()
    return "untitled"


def build_site(notebooks: Path, out: Path) -> list[Path]:
    """Render ``notebooks/NN_*.ipynb`` (executed, with outputs) to ``out/NN_*.html`` and write
    ``out/index.html`` linking them in course order; returns the pages written."""
    paths = sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise DataError(f"no executed notebooks (NN_*.ipynb) in {notebooks}; run `make figures` first")
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter()       # embeds the PNG outputs, so each page stands alone
    pages, items = [], []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        body, _ = exporter.from_notebook_node(nb)
        page = out / f"{path.stem}.html"
        page.write_text(body)
        pages.append(page)
        items.append(f'<li><a href="{page.name}">{html.escape(title(nb))}</a></li>')
    index = out / "index.html"
    index.write_text("<!doctype html><html><head><meta charset='utf-8'><title>fedalign-lite course</title></head>"
                     "<body><h1>fedalign-lite: federated alignment, one paper per notebook</h1>"
                     "<p>Executed notebooks in course order (rendered by <code>make figures</code>).</p>"
                     f"<ol>{''.join(items)}</ol></body></html>")
    return [index, *pages]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebooks", default="build/notebooks")
    parser.add_argument("--out", default="build/site")
    args = parser.parse_args(argv)
    pages = build_site(Path(args.notebooks), Path(args.out))
    print(f"wrote {len(pages)} pages to {args.out} (open {args.out}/index.html)")


if __name__ == "__main__":
    main()
