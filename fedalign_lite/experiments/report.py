"""``REPORT.md`` from every ``figures/<paper>/claims.json`` (and ``claims_<name>.json`` beside it): the
reproduction report ``make report`` writes (``make figures`` ends with it), and the one-line tally per
claims file in the README.

    python -m fedalign_lite.experiments.report [--figures figures] [--out REPORT.md] [--readme README.md]
"""
from __future__ import annotations

import argparse
import json
import math
import re
from collections import Counter
from pathlib import Path

from fedalign_lite.errors import DataError
from fedalign_lite.experiments.claims import CLAIMS_KEYS, VERDICTS, seeds_to_resolve

PAPERS = {"pluralllm": ("PluralLLM", "01_pluralllm.ipynb"), "fedpdpo": ("FedPDPO", "02_fedpdpo.ipynb"),
          "firm": ("FIRM", "03_firm.ipynb"), "fedmoa": ("FedMOA", "04_fedmoa.ipynb")}
"""Course order: figures folder -> (paper name, notebook)."""
TALLY_START, TALLY_END = "<!-- claims-tally:start -->", "<!-- claims-tally:end -->"


def load_claims(figures: Path) -> dict[Path, dict]:
    """``{claims file: its document}`` in course order: each paper's ``claims.json`` (its notebook), then
    any ``claims_<name>.json`` beside it (a longer run the notebook does not execute)."""
    out = {}
    for folder in PAPERS:
        main = figures / folder / "claims.json"
        for path in ([main] if main.exists() else []) + sorted((figures / folder).glob("claims_*.json")):
            doc = json.loads(path.read_text())
            missing = [k for k in CLAIMS_KEYS if k not in doc]
            if missing:
                raise DataError(f"{path} lacks {missing}; a claims file has {list(CLAIMS_KEYS)}")
            out[path] = doc
    return out


def _num(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _interval(row: dict) -> str:
    lo, hi = row["ci95"]
    return f"{_num(row['mean'])} [{_num(lo)}, {_num(hi)}]"


def tally(doc: dict) -> str:
    """``"2 reproduced, 1 direction only, ..."`` in :data:`VERDICTS` order."""
    counts = Counter(c["verdict"] for c in doc["claims"])
    return ", ".join(f"{counts[v]} {v}" for v in VERDICTS if counts[v]) or "no claims"


def what_is_needed(doc: dict) -> list[str]:
    """For each claim that is ``no signal`` or ``direction only``: what would test it."""
    failing = [s["id"] for s in doc["signal"] if not s["holds"]]
    out = []
    for c in doc["claims"]:
        if c["verdict"] == "no signal":
            out.append(f"`{c['id']}`: the experiment fails its signal checks ({', '.join(failing)}); it needs a "
                       f"setting where they hold (a longer CPU preset or the gpu preset), not more seeds.")
        elif c["verdict"] == "direction only":
            n = seeds_to_resolve(c)
            more = f"about {n} seeds" if n else "many more seeds than we can estimate"
            out.append(f"`{c['id']}`: the interval includes 0; at the measured mean and spread, {more} would "
                       f"resolve it (we ran {c['n']}).")
    return out


def paper_section(path: Path, doc: dict, root: Path) -> str:
    """One claims file's section: the claims, the signal checks, what would test the open claims and, for a
    notebook's ``claims.json``, the figures beside it."""
    name, notebook = PAPERS[path.parent.name]
    notebook_run = path.name == "claims.json"
    source = (f"Notebook: `notebooks/{notebook}`" if notebook_run
              else f"Run outside the notebook, shown in `notebooks/{notebook}`")
    lines = [f"## {name}" + ("" if notebook_run else f", {doc['preset']}"), "",
             f"Setting: preset `{doc['preset']}`, model `{doc.get('model', '')}`, seeds {doc['seeds']}, "
             f"{doc['wall_s']:.0f} s wall, commit `{doc['commit']}`. {source}; "
             f"numbers: `{path.relative_to(root).as_posix()}`.", "",
             "| claim | the paper | ours: mean [95% CI] (n) | verdict |", "|---|---|---|---|"]
    lines += [f"| {c['statement']} ({c['metric']}) | {c['paper_value']} | {_interval(c)} ({c['n']}) | "
              f"**{c['verdict']}** |" for c in doc["claims"]]
    lines += ["", "Signal checks (the experiment means something only if all hold):", "",
              "| check | mean [95% CI] | holds |", "|---|---|---|"]
    lines += [f"| {s['statement']} | {_interval(s)} | {'yes' if s['holds'] else '**no**'} |" for s in doc["signal"]]
    needed = what_is_needed(doc)
    if needed:
        lines += ["", "What would test the open claims:", ""] + [f"- {x}" for x in needed]
    pngs = sorted(path.parent.glob("*.png")) if notebook_run else []
    if pngs:
        lines += [""] + [f"![{p.stem}]({p.relative_to(root).as_posix()})" for p in pngs]
    return "\n".join(lines) + "\n"


def render(figures: Path, root: Path) -> str:
    """The report's Markdown; paths in it are relative to ``root`` (where REPORT.md is written)."""
    figures, root = figures.resolve(), root.resolve()
    docs = load_claims(figures)
    head = ["# Reproduction report", "",
            "Generated by `make report` from `figures/<paper>/claims.json` (and any `claims_<name>.json` of a longer",
            "run beside it); do not edit by hand. Each claim is",
            "tested on per-seed values of paired runs (the same evaluation set for every seed and method): the mean,",
            "its 95% t-interval and the number of seeds. **reproduced**: the interval excludes 0 on the paper's side;",
            "**direction only**: the right sign, the interval includes 0; **not reproduced**: the wrong sign, or",
            "excluded on the other side; **by construction**: follows from what is sent; **no signal**: the",
            "experiment failed a signal check, so its numbers test nothing.", ""]
    missing = [PAPERS[f][0] for f in PAPERS if not any(p.parent.name == f for p in docs)]
    if missing:
        head += [f"Not yet reported through claims files: {', '.join(missing)}.", ""]
    return "\n".join(head) + "\n" + "\n".join(paper_section(p, d, root) for p, d in docs.items())


def readme_tally(figures: Path) -> str:
    docs = load_claims(figures)
    rows = [f"- {PAPERS[p.parent.name][0]} ({d['preset']}, {len(d['seeds'])} seeds): {tally(d)}" for p, d in docs.items()]
    return "\n".join(rows) or "- No paper has written its claims file yet."


def update_readme(readme: Path, figures: Path) -> None:
    """Replace the text between the tally markers of ``readme`` with :func:`readme_tally`."""
    text = readme.read_text()
    pattern = re.compile(re.escape(TALLY_START) + ".*?" + re.escape(TALLY_END), re.S)
    if not pattern.search(text):
        raise DataError(f"{readme} has no {TALLY_START} ... {TALLY_END} block for the claims tally")
    readme.write_text(pattern.sub(f"{TALLY_START}\n{readme_tally(figures)}\n{TALLY_END}", text))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--figures", default="figures")
    parser.add_argument("--out", default="REPORT.md")
    parser.add_argument("--readme", default="README.md")
    args = parser.parse_args(argv)
    figures, out = Path(args.figures), Path(args.out)
    out.write_text(render(figures, out.resolve().parent))
    update_readme(Path(args.readme), figures)
    print(f"wrote {out} ({len(load_claims(figures))} claims files) and the tally in {args.readme}")


if __name__ == "__main__":
    main()
