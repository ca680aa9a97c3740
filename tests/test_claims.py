"""The claims statistics against scipy and hand-computed cases, and each verdict on constructed values."""
import json
import math

import numpy as np
import pytest
from scipy import stats

from fedalign_lite.errors import ConfigError
from fedalign_lite.experiments import report
from fedalign_lite.experiments.claims import (
    Claim,
    SignalCheck,
    check_signal,
    claims_file,
    claims_table,
    evaluate_claim,
    interval,
    seeds_to_resolve,
    verdict,
    write_claims,
)


@pytest.mark.parametrize("values", [[0.1, 0.4], [1.0, 2.0, 4.5], [0.3, -0.1, 0.2, 0.25, 0.05, 0.12]])
def test_t_interval_equals_scipy(values):
    got = interval(values)
    sem = stats.sem(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sem)
    assert got["ci95"] == pytest.approx([lo, hi], rel=1e-12)
    assert got["std"] == pytest.approx(np.std(values, ddof=1)) and got["n"] == len(values)


def test_interval_by_hand():
    got = interval([1.0, 2.0, 3.0])                 # mean 2, sample std 1, t(0.975, 2) = 4.302653
    half = 4.302652729911275 / math.sqrt(3)
    assert got["mean"] == 2.0 and got["std"] == 1.0
    assert got["ci95"] == pytest.approx([2 - half, 2 + half], rel=1e-9)
    assert "bootstrap95" not in got                  # only from n >= 5


def test_bootstrap_interval_from_five_seeds_is_reproducible_and_brackets_the_mean():
    values = [0.2, 0.5, 0.1, 0.4, 0.3]
    a, b = interval(values), interval(values)
    assert a["bootstrap95"] == b["bootstrap95"]
    lo, hi = a["bootstrap95"]
    assert min(values) <= lo < 0.3 < hi <= max(values)


def test_one_seed_has_no_interval_and_nan_is_an_error():
    got = interval([0.7])
    assert math.isnan(got["std"]) and all(math.isnan(x) for x in got["ci95"])
    with pytest.raises(ConfigError, match="finite"):
        interval([0.1, float("nan")])
    with pytest.raises(ConfigError, match="at least one"):
        interval([])


@pytest.mark.parametrize("values, direction, expected", [
    ([1.0, 1.1, 0.9, 1.05], 1, "reproduced"),
    ([-1.0, -1.1, -0.9], -1, "reproduced"),
    ([0.5, -0.2, 0.4], 1, "direction only"),
    ([0.3], 1, "direction only"),                   # one seed: the right sign, no interval
    ([-0.5, 0.2, -0.4], 1, "not reproduced"),       # wrong sign, interval includes 0
    ([-1.0, -1.1, -0.9], 1, "not reproduced"),      # interval excludes 0 on the other side
    ([0.0, 0.0, 0.0], 1, "not reproduced"),         # no effect at all
])
def test_each_verdict(values, direction, expected):
    assert verdict(interval(values), direction) == expected


def test_by_construction_and_no_signal():
    assert verdict(interval([3.0, 3.0]), 1, by_construction=True) == "by construction"
    assert verdict(interval([3.0, 0.0]), 1, by_construction=True) == "not reproduced"
    assert verdict(interval([1.0, 1.1, 0.9]), 1, signal_ok=False) == "no signal"
    assert verdict(interval([3.0, 3.0]), 1, by_construction=True, signal_ok=False) == "by construction"


def test_signal_checks_hold_only_when_the_interval_excludes_zero():
    rises = SignalCheck("fedavg_learns", "FedAvg's accuracy rises above round 0")
    assert check_signal(rises, [0.10, 0.12, 0.09])["holds"]
    assert not check_signal(rises, [0.10, -0.05, 0.09])["holds"]
    assert check_signal(SignalCheck("falls", "loss falls", direction=-1), [-0.2, -0.3, -0.25, -0.22])["holds"]


def test_seeds_to_resolve_by_hand():
    # mean 1, std 1: t(0.975, 5)/sqrt(6) = 1.049 > 1, t(0.975, 6)/sqrt(7) = 0.925 < 1
    assert seeds_to_resolve({"mean": 1.0, "std": 1.0}) == 7
    assert seeds_to_resolve({"mean": 0.0, "std": 1.0}) is None


def test_claims_file_round_trip(tmp_path):
    claim = Claim("beats_fedavg", "FedPDPO beats FedAvg-DPO", "+4.80 points", "acc difference, final round")
    row = evaluate_claim(claim, [0.02, 0.03, 0.025], signal_ok=True)
    assert row["verdict"] == "reproduced" and row["paper_value"] == "+4.80 points"

    class Cfg:
        preset = "smoke"

    doc = claims_file("fedpdpo", Cfg(), [0, 1, 2], 12.34, "abc123", [], [row])
    write_claims(tmp_path / "claims.json", doc)
    assert json.loads((tmp_path / "claims.json").read_text())["claims"][0]["n"] == 3
    with pytest.raises(ConfigError, match="lacks"):
        write_claims(tmp_path / "bad.json", {"paper": "x"})
    with pytest.raises(ConfigError, match="direction must be 1 or -1"):
        Claim("x", "s", "v", "m", direction=0)


def test_report_and_readme_tally_from_claims_files(tmp_path):
    figures = tmp_path / "figures"
    (figures / "firm").mkdir(parents=True)
    (figures / "firm" / "fig1.png").write_bytes(b"png")

    class Cfg:
        preset, model = "cpu", "fedalign-base"

    signal = [check_signal(SignalCheck("moves", "training moves the rates"), [0.2, 0.3, 0.25])]
    rows = [evaluate_claim(Claim("drift", "beta > 0 lowers drift", "smoother weights", "D1(beta=0) - D1(beta)"),
                           [0.01, -0.005, 0.012]),
            evaluate_claim(Claim("bytes", "one upload of size d", "d vs (M+1) d", "FedCMOO-A bytes - FIRM bytes",
                                 by_construction=True), [2.0, 2.0, 2.0])]
    write_claims(figures / "firm" / "claims.json", claims_file("firm", Cfg(), [0, 1, 2], 600, "abc", signal, rows))
    longer = claims_file("firm", Cfg(), [0, 1], 900, "abc", signal, rows[1:], setting="cpu, 10x rounds")
    write_claims(figures / "firm" / "claims_longer.json", longer)
    text = report.render(figures, tmp_path)
    assert "## FIRM\n" in text and "**direction only**" in text and "**by construction**" in text
    assert "![fig1](figures/firm/fig1.png)" in text and "Not yet reported through claims files: PluralLLM" in text
    assert "seeds would resolve it (we ran 3)" in text
    extra = text[text.index("## FIRM, cpu, 10x rounds"):]                 # after the notebook's section
    assert "preset `cpu, 10x rounds`" in extra and "figures/firm/claims_longer.json" in extra
    assert "![fig1]" not in extra                                           # the figures go with the notebook's
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{report.TALLY_START}\nold\n{report.TALLY_END}\nrest\n")
    report.update_readme(readme, figures)
    assert "- FIRM (cpu, 3 seeds): 1 direction only, 1 by construction\n- FIRM (cpu, 10x rounds, 2 seeds): " \
           "1 by construction" in readme.read_text()
    with pytest.raises(ConfigError, match="must be 'no signal'"):
        failing = [check_signal(SignalCheck("moves", "s"), [0.2, -0.3, 0.25])]
        claims_file("firm", Cfg(), [0, 1, 2], 600, "abc", failing, rows)


def test_claims_table_shows_only_what_the_file_holds():
    class Cfg:
        preset, model = "smoke", "random-tiny"

    signal = [check_signal(SignalCheck("learns", "FedAvg learns"), [0.1, 0.2, 0.15])]
    rows = [evaluate_claim(Claim("c", "FL beats centralized", "+4%", "AS(FL) - AS(central)"), [0.01, 0.02, 0.015])]
    table = claims_table(claims_file("pluralllm", Cfg(), [0, 1, 2], 1.0, "abc", signal, rows))
    assert table["verdict"].tolist() == ["reproduced", "holds"] and table["the paper"][0] == "+4%"
    assert table["ours: mean [95% CI]"][0].startswith("0.015 [")


def test_a_two_sided_signal_check_holds_on_either_side():
    differs = SignalCheck("conflict", "A differs from B", direction=0)
    assert check_signal(differs, [-0.12, -0.10, -0.15])["holds"] and check_signal(differs, [0.12, 0.10, 0.15])["holds"]
    assert not check_signal(differs, [0.1, -0.1, 0.05])["holds"]
