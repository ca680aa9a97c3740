"""Runs that differ only in ``seed`` are paired: they see the same data, client split and evaluation
sets (``data_seed`` fixes those), so a per-seed difference between methods compares like with like."""
import pytest

from fedalign_lite.algorithms import fed_dpo, fedmoa, firm, pluralllm
from fedalign_lite.algorithms import fedpdpo as pdpo
from fedalign_lite.data.client_preferences import client_preference_pairs
from fedalign_lite.errors import ConfigError


def _same_and_different(make):
    """make(cfg overrides) -> comparable data: equal across seeds, different across data seeds."""
    assert make(seed=0) == make(seed=3)
    assert make(seed=0) != make(seed=0, data_seed=1)


def test_fed_dpo_client_split_is_paired():
    _same_and_different(lambda **kw: [p.tolist() for p in fed_dpo.federation(fed_dpo.get_preset("smoke", **kw))
                                       .artifacts["parts"]])


def test_firm_prompt_pools_and_held_out_prompts_are_paired():
    _same_and_different(lambda **kw: [r["prompt"] for r in firm.federation(firm.get_preset("smoke", **kw))
                                      .artifacts["held"]])


@pytest.mark.parametrize("setting", ["iid", "noniid", "cross"])
def test_fedpdpo_pairs_are_paired(setting):
    _same_and_different(lambda **kw: client_preference_pairs(pdpo.get_preset("smoke", **kw), setting))


def test_fedmoa_validation_and_evaluation_problems_are_paired():
    _same_and_different(lambda **kw: [[t["prompt"] for t in ts] for purpose in (0, 1)
                                      for ts in fedmoa.validation_tasks(fedmoa.get_preset("smoke", **kw), purpose).values()])


def test_pluralllm_evaluation_draws_are_paired():
    _same_and_different(lambda **kw: pluralllm.eval_splits(pluralllm.get_preset("smoke", **kw), ["a", "b"], 25))


def test_data_seed_is_validated():
    with pytest.raises(ConfigError, match="data_seed must be an integer >= 0"):
        firm.get_preset("smoke", data_seed=-1)
    assert firm.get_preset("smoke", data_seed=4).data_seed == 4
