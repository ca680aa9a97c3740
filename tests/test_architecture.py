"""The package's folders are its layers, and imports run one way: a module may import from its own
layer or a lower one, never from a higher one. Also: no algorithm module holds an experiment grid,
and every document the repo cites is in the repo."""
import ast
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fedalign_lite"
LAYERS = {"errors": 0, "config": 0, "seeding": 0,   # what everything shares
          "data": 1, "models": 2, "objectives": 3, "federated": 4, "algorithms": 5,
          "experiments": 6, "recipes": 6, "plots": 7}
"""Top-level module or subpackage -> rank; lower ranks never import higher ones."""


def _layer_of(module: str) -> str:
    """``fedalign_lite.federated.loop`` -> ``federated``."""
    return module.split(".")[1]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if len(parts) > 1:
            yield ".".join(parts), path


def _imports(module: str, path: Path) -> list[str]:
    """The fedalign_lite modules ``path`` imports (absolute and relative forms)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("fedalign_lite.")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            if base == "fedalign_lite":
                out += [f"fedalign_lite.{a.name}" for a in node.names]
            elif base.startswith("fedalign_lite."):
                out.append(base)
    return out


def test_every_module_is_in_a_layer():
    unplaced = sorted({_layer_of(m) for m, _ in _modules()} - set(LAYERS))
    assert not unplaced, f"place {unplaced} in LAYERS (tests/test_architecture.py) and docs/architecture.md"


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for module, path in _modules():
        here = LAYERS.get(_layer_of(module), -1)
        for target in _imports(module, path):
            if LAYERS.get(_layer_of(target), 99) > here:
                upward.append(f"{module} ({_layer_of(module)}) imports {target}")
    assert not upward, "\n".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check above must be able to fail: a data module importing the federated loop is caught."""
    fake = tmp_path / "fedalign_lite" / "data" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from fedalign_lite.federated.loop import Federation\nfrom ..algorithms import firm\n")
    targets = _imports("fedalign_lite.data.bad", fake)
    assert targets == ["fedalign_lite.federated.loop", "fedalign_lite.algorithms"]
    assert all(LAYERS[_layer_of(t)] > LAYERS["data"] for t in targets)


def test_algorithm_modules_define_no_experiment_grid():
    for path in (PACKAGE / "algorithms").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert not names & {"run_experiment", "metrics_table", "summarize"}, path.name
        assert "map_processes" not in path.read_text() and "run_grid" not in path.read_text(), path.name


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.stdout.split()]


def test_no_tracked_file_cites_a_document_outside_the_repo():
    outside = re.compile(r"\b(PAPERS|DESIGN|MEASURED|ASSETS)\.md\b")
    hits = [f"{p.relative_to(ROOT)}" for p in _tracked() if p.is_file() and p.suffix in (".py", ".ipynb", ".md", ".toml")
            and outside.search(p.read_text(errors="ignore"))]
    assert not hits, hits


def test_every_cited_docs_page_exists():
    cited = re.compile(r"\bdocs/([\w\-]+\.md)")
    missing = sorted({f"{p.relative_to(ROOT)} -> docs/{m}" for p in _tracked() if p.is_file()
                      and p.suffix in (".py", ".ipynb", ".md", ".toml")
                      for m in cited.findall(p.read_text(errors="ignore")) if not (ROOT / "docs" / m).exists()})
    assert not missing, missing
