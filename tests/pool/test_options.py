from __future__ import annotations

import dataclasses

import pytest

from django_dbpool.pool import PoolConfigError, PoolOptions

DEFAULTS = {
    "MAX_SIZE": 10,
    "MIN_SIZE": 0,
    "TIMEOUT": 10.0,
    "MAX_WAITING": 0,
    "MAX_LIFETIME": 1800.0,
    "MAX_IDLE": 600.0,
    "VALIDATE_AFTER": 1.0,
    "KEEPALIVE": 120.0,
    "LEAK_TIMEOUT": 0.0,
    "FAIL_FAST_AFTER": 3,
    "BACKOFF_MAX": 2.0,
    "DRAIN_TIMEOUT": 25.0,
}


def test_defaults_match_the_documented_table():
    assert PoolOptions.from_mapping(None).as_settings() == DEFAULTS
    assert PoolOptions.from_mapping({}) == PoolOptions()


def test_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PoolOptions().max_size = 3  # type: ignore[misc]


def test_durations_accept_int_and_float_and_are_stored_as_float():
    opts = PoolOptions.from_mapping({"TIMEOUT": 3, "MAX_IDLE": 0.5, "KEEPALIVE": 0})
    assert opts.timeout == 3.0
    assert isinstance(opts.timeout, float)
    assert opts.max_idle == 0.5
    assert opts.keepalive == 0.0


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(PoolConfigError) as info:
        PoolOptions.from_mapping({"MAX_CONNS": 5})
    assert info.value.option == "MAX_CONNS"
    assert "Unknown POOL option 'MAX_CONNS'" in str(info.value)
    assert "MAX_SIZE" in str(info.value)


def test_lower_case_key_hints_at_the_upper_case_name():
    with pytest.raises(PoolConfigError, match="did you mean 'MAX_SIZE'"):
        PoolOptions.from_mapping({"max_size": 5})


def test_pool_setting_must_be_a_mapping():
    with pytest.raises(PoolConfigError, match="POOL must be a dict"):
        PoolOptions.from_mapping([("MAX_SIZE", 3)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("option", "value", "accepted"),
    [
        ("MAX_SIZE", 0, "an integer >= 1"),
        ("MAX_SIZE", 2.0, "an integer >= 1"),
        ("MAX_SIZE", True, "an integer >= 1"),
        ("MAX_SIZE", "10", "an integer >= 1"),
        ("MIN_SIZE", -1, "an integer >= 0"),
        ("MAX_WAITING", -1, "an integer >= 0 (0 means no cap)"),
        ("FAIL_FAST_AFTER", 0, "an integer >= 1"),
        ("TIMEOUT", 0, "> 0"),
        ("TIMEOUT", True, "int or float"),
        ("TIMEOUT", "10", "int or float"),
        ("TIMEOUT", float("nan"), "finite"),
        ("MAX_LIFETIME", float("inf"), "finite"),
        ("MAX_IDLE", -5, "> 0"),
        ("VALIDATE_AFTER", -0.1, ">= 0 (0 probes every checkout)"),
        ("KEEPALIVE", -1, ">= 0 (0 disables)"),
        ("LEAK_TIMEOUT", None, ">= 0 (0 disables)"),
        ("BACKOFF_MAX", 0, "> 0"),
        ("DRAIN_TIMEOUT", -1, ">= 0"),
    ],
)
def test_bad_values_name_the_option_the_value_and_what_is_accepted(option, value, accepted):
    with pytest.raises(PoolConfigError) as info:
        PoolOptions.from_mapping({option: value})
    err = info.value
    assert isinstance(err, ValueError)
    assert err.option == option
    assert err.value is value or (value != value and err.value != err.value)
    message = str(err)
    assert f"{option}={value!r}" in message
    assert accepted in message


def test_min_size_may_not_exceed_max_size():
    with pytest.raises(PoolConfigError) as info:
        PoolOptions.from_mapping({"MIN_SIZE": 5, "MAX_SIZE": 4})
    assert info.value.option == "MIN_SIZE"
    assert "between 0 and MAX_SIZE (4)" in str(info.value)
    assert PoolOptions.from_mapping({"MIN_SIZE": 4, "MAX_SIZE": 4}).min_size == 4


def test_direct_construction_validates_too():
    with pytest.raises(PoolConfigError, match="MAX_SIZE"):
        PoolOptions(max_size=0)
