from __future__ import annotations

import os

import pytest

from execmesh.errors import ConfigError
from execmesh.settings import Settings


def test_handler_threads_default_to_four_per_core_as_functions_framework_has_it() -> None:
    assert Settings.from_env({}).handler_threads == (os.cpu_count() or 1) * 4
    assert Settings.from_env({"THREADS": "64"}).handler_threads == 64


@pytest.mark.parametrize("value", ["0", "-3", "many", "1.5"])
def test_handler_threads_must_be_a_whole_number_above_zero(value: str) -> None:
    with pytest.raises(ConfigError, match="THREADS"):
        Settings.from_env({"THREADS": value})


def test_live_streams_per_user_are_capped_and_the_cap_must_be_above_zero() -> None:
    assert Settings.from_env({}).api_max_streams_per_user == 10
    variable = "EXECMESH_API_MAX_STREAMS_PER_USER"
    assert Settings.from_env({variable: "3"}).api_max_streams_per_user == 3
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: "0"})
