"""Loaders for the real datasets used at full scale, behind one interface.

Each takes ``source``: a hub dataset id (needs network; used by the ``gpu`` preset when online) or a
local ``.jsonl``/``.json``/``.csv``/``.parquet`` file in the same schema. Both go through
``datasets.load_dataset`` and then the same conversion, so the conversion is what the tests cover
(on small local files the project writes). The default ``cpu`` preset never calls these.

=====================  ========================================  =====================================
loader                 hub id (default)                          schema read
=====================  ========================================  =====================================
``load_hh_rlhf``       ``Anthropic/hh-rlhf``                     chosen, rejected (full dialogues)
``load_imdb``          ``stanfordnlp/imdb``                      text, label (0 neg, 1 pos)
``load_global_opinions`` ``Anthropic/llm_global_opinions``        question, selections, options, source
``load_gsm8k``         ``openai/gsm8k`` (config ``main``)        question, answer ("... #### 72")
=====================  ========================================  =====================================
"""
from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

from fedalign_lite.data.assets import require_columns
from fedalign_lite.data.tasks import NUMBER
from fedalign_lite.errors import DataError

_LOCAL = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_COMPRESSED = (".gz", ".bz2", ".xz")


def local_format(source: str) -> str | None:
    """The ``datasets`` builder for a local file name (``.jsonl``, ``.json``, ``.csv``, ``.parquet``,
    the first three also compressed as ``.gz``, ``.bz2`` or ``.xz``), or None for a hub id."""
    suffixes = Path(source).suffixes
    if len(suffixes) >= 2 and suffixes[-1] in _COMPRESSED and suffixes[-2] in _LOCAL:
        return _LOCAL[suffixes[-2]]
    return _LOCAL.get(suffixes[-1]) if suffixes else None


def _rows(source: str, split: str, config: str | None = None) -> list[dict]:
    """Records of ``source`` (local file or hub id) as a list of dicts."""
    import datasets  # noqa: PLC0415 -- 1-2 s to import, and only the full-scale loaders need it

    path, builder = Path(source), local_format(source)
    if builder is not None:
        if not path.exists():
            raise DataError(f"data file {source} does not exist")
        if path.stat().st_size == 0:
            raise DataError(f"data file {source} is empty")
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as e:  # datasets raises several types for malformed files
            raise DataError(f"data file {source} is malformed ({type(e).__name__}: {e})") from e
    else:
        ds = datasets.load_dataset(source, config, split=split)
    return [dict(r) for r in ds]


def split_dialogue(text: str) -> tuple[str, str]:
    """HH-RLHF dialogue -> (prompt up to and including the last 'Assistant:', final response)."""
    marker = "\n\nAssistant:"
    i = text.rfind(marker)
    if i < 0:
        raise DataError("hh-rlhf record has no '\\n\\nAssistant:' turn")
    return text[: i + len(marker)], text[i + len(marker):]


def load_hh_rlhf(source: str = "Anthropic/hh-rlhf", split: str = "train") -> list[dict]:
    """``[{"prompt", "chosen", "rejected"}]``; the shared dialogue prefix becomes the prompt."""
    rows = _rows(source, split)
    require_columns(rows, ["chosen", "rejected"], source)
    out = []
    for r in rows:
        prompt, chosen = split_dialogue(r["chosen"])
        prompt_r, rejected = split_dialogue(r["rejected"])
        if prompt == prompt_r:
            out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    if len(out) < len(rows):
        warnings.warn(f"{source}: dropped {len(rows) - len(out)} of {len(rows)} pairs whose chosen and rejected "
                      f"dialogues differ before the last assistant turn (no shared prompt)", stacklevel=2)
    return out


def load_imdb(source: str = "stanfordnlp/imdb", split: str = "train") -> list[dict]:
    """``[{"text", "label"}]`` with label 1 positive, 0 negative."""
    rows = _rows(source, split)
    require_columns(rows, ["text", "label"], source)
    bad = {r["label"] for r in rows} - {0, 1}
    if bad:
        raise DataError(f"{source}: column 'label' must be 0 or 1, found {sorted(bad)}")
    return [{"text": r["text"], "label": int(r["label"])} for r in rows]


def _literal(value, what: str):
    """GlobalOpinionQA stores dicts and lists as Python reprs, e.g. "defaultdict(<class 'list'>, {...})"."""
    if not isinstance(value, str):
        return value
    value = re.sub(r"^defaultdict\(<class '\w+'>,\s*(.*)\)$", r"\1", value.strip(), flags=re.S)
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError) as e:
        raise DataError(f"cannot parse {what}: {value[:80]!r}") from e


def load_global_opinions(source: str = "Anthropic/llm_global_opinions", split: str = "train") -> list[dict]:
    """``[{"question", "options": [str], "selections": {country: [prob]}, "source"}]``.

    Rows with an empty question/options, or with a country whose selection is empty or all zero, are
    dropped, as PluralLLM's loader does (docs/pluralllm.md §2). Selections are renormalised to sum to 1.
    """
    rows = _rows(source, split)
    require_columns(rows, ["question", "selections", "options"], source)
    out = []
    for r in rows:
        options = _literal(r["options"], "options")
        selections = _literal(r["selections"], "selections")
        if not r["question"] or not options:
            continue
        if any(not v or sum(v) == 0 for v in selections.values()):
            continue
        sel = {k: [x / sum(v) for x in v] for k, v in selections.items()}
        out.append({"question": r["question"], "options": list(options), "selections": sel,
                    "source": r.get("source", "")})
    return out


def load_gsm8k(source: str = "openai/gsm8k", split: str = "test") -> list[dict]:
    """``[{"question", "answer": float, "solution"}]`` (the number after '####')."""
    rows = _rows(source, split, config=None if local_format(source) else "main")
    require_columns(rows, ["question", "answer"], source)
    out = []
    for r in rows:
        m = re.search(rf"####\s*({NUMBER})", r["answer"])
        if not m:
            raise DataError(f"{source}: gsm8k answer lacks '#### <number>': {r['answer'][-60:]!r}")
        out.append({"question": r["question"], "answer": float(m.group(1).replace(",", "")), "solution": r["answer"]})
    return out
