"""A run's configuration read back from config.json or a checkpoint is input like an option:
every value of its field's type and within its option's range, or one sentence."""

from __future__ import annotations

import json

import pytest

from core.config import RunConfig, validate
from core.errors import ConfigError

SAVED = RunConfig(dataset="synthetic", limit_train=64, limit_test=32, seed=7).to_dict()


def test_a_saved_configuration_reads_back_as_it_was_written() -> None:
    config = RunConfig.from_dict(json.loads(json.dumps(SAVED)))
    assert config == RunConfig(dataset="synthetic", limit_train=64, limit_test=32, seed=7)
    assert config.to_dict() == SAVED


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"seed": "5"}, "the saved configuration: seed is str '5', not int"),
        ({"batch_size": 64.0}, "the saved configuration: batch_size is float '64.0', not int"),
        ({"batch_size": True}, "the saved configuration: batch_size is bool 'True', not int"),
        ({"download": 1}, "the saved configuration: download is int '1', not bool"),
        ({"limit_train": [64]}, "the saved configuration: limit_train is list '[64]', not int | None"),
        ({"run_dir": 3}, "the saved configuration: run_dir is int '3', not str | None"),
        ({"threads": float("nan")}, "the saved configuration: threads is float 'nan', not int"),
        ({"batch_size": 10**30}, f"--batch-size must be at most 65536, not {10**30}"),
        ({"seed": -1}, "--seed must be at least 0, not -1"),
        ({"limit_train": 1}, "--limit-train must be at least 2, not 1"),
        ({"stall_timeout": 10**6}, "--stall-timeout must be at most 604800, not 1000000"),
    ],
)
def test_a_value_of_another_type_or_beyond_its_range_is_one_sentence(change: dict, said: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({**SAVED, **change})
    assert str(info.value) == said


def test_what_is_no_configuration_or_holds_no_plan_is_refused() -> None:
    with pytest.raises(ConfigError, match="^the saved configuration is not a run configuration$"):
        RunConfig.from_dict([SAVED])
    with pytest.raises(ConfigError, match="^the saved configuration's plan is not a plan$"):
        RunConfig.from_dict({k: v for k, v in SAVED.items() if k != "plan"})


def test_a_key_a_later_version_added_is_passed_over_however_deep() -> None:
    deep: object = 1
    for _ in range(10_000):
        deep = [deep]
    assert RunConfig.from_dict({**SAVED, "later": deep}) == RunConfig.from_dict(SAVED)


def test_options_are_held_to_the_same_ranges_as_a_saved_configuration() -> None:
    for config, said in (
        (RunConfig(batch_size=0), "--batch-size must be at least 1, not 0"),
        (RunConfig(nproc_per_node=1025), "--nproc-per-node must be at most 1024, not 1025"),
        (RunConfig(log_every=1 << 31), f"--log-every must be at most {1 << 30}, not {1 << 31}"),
    ):
        with pytest.raises(ConfigError) as info:
            validate(config)
        assert str(info.value) == said
