"""The grid runner: every (variant, seed) once, records in seed order whatever order the jobs start in."""
from fedalign_lite.algorithms.pluralllm import get_preset
from fedalign_lite.experiments.grid import run_grid

STARTED: list = []


def record_start(method: str, cfg) -> dict:
    """A run that only notes when it started (workers=1 runs jobs in this process, in submission order)."""
    STARTED.append((method, cfg.seed))
    return {"method": method, "rounds": cfg.rounds}


VARIANTS = {"short": ("a", {"rounds": 1}), "long": ("b", {"rounds": 2}), "medium": ("c", {"rounds": 3})}


def test_costs_start_the_longest_runs_first_and_leave_the_records_alone():
    cfg = get_preset("smoke")
    STARTED.clear()
    plain = run_grid(cfg, VARIANTS, [5, 6], run_one=record_start, workers=1, progress=False,
                     seed_counts={"medium": 1})
    assert STARTED == [("a", 5), ("b", 5), ("c", 5), ("a", 6), ("b", 6)]     # seeds outermost
    STARTED.clear()
    ordered = run_grid(cfg, VARIANTS, [5, 6], run_one=record_start, workers=1, progress=False,
                       seed_counts={"medium": 1}, costs={"long": 10.0, "medium": 3.0})
    assert STARTED == [("b", 5), ("b", 6), ("c", 5), ("a", 5), ("a", 6)]     # longest first, seeds in order
    assert ordered == plain
    assert [r["seed"] for r in ordered["short"]] == [5, 6] and [r["rounds"] for r in ordered["long"]] == [2, 2]
