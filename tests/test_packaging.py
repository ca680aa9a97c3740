"""The two install routes name the same pins, and CI runs the README's test command."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_deps():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_environment_yml_matches_pyproject():
    yml = (ROOT / "environment.yml").read_text()
    conda_pip = re.findall(r"^\s+- ([A-Za-z0-9_.\-]+==[^\s]+)\s*$", yml, flags=re.M)
    assert sorted(conda_pip) == sorted(_pyproject_deps())
    assert re.search(r"^\s+- python=3\.11\s*$", yml, flags=re.M)


def test_every_requirement_is_pinned():
    nodeps = [l for l in (ROOT / "requirements-nodeps.txt").read_text().splitlines() if l and not l.startswith("#")]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for req in _pyproject_deps() + nodeps + [r for reqs in extras.values() for r in reqs]:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z,]+\])?==[0-9][^\s]*", req), f"unpinned requirement {req!r}"


def test_base_install_does_not_need_flower():
    """Flower and Ray are an extra: nothing but the adapter imports them."""
    adapter = ROOT / "fedalign_lite" / "federated" / "flower.py"
    assert re.search(r"^\s*from flwr\b", adapter.read_text(), flags=re.M)      # the check below can see one
    for path in (ROOT / "fedalign_lite").rglob("*.py"):
        if path != adapter:
            assert not re.search(r"^\s*(import|from) (flwr|ray)\b", path.read_text(), flags=re.M), path.name
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        assert "flwr" not in nb.read_text() and "fedalign_lite.federated.flower" not in nb.read_text(), nb.name


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make figures" in readme
    commands = [l for l in ci.splitlines() if l.strip() and not l.startswith("#")]
    assert commands[-1].strip() == "exec make test"
