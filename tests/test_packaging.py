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
    for req in _pyproject_deps() + nodeps:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][^\s]*", req), f"unpinned requirement {req!r}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make figures" in readme
    commands = [l for l in ci.splitlines() if l.strip() and not l.startswith("#")]
    assert commands[-1].strip() == "exec make test"
