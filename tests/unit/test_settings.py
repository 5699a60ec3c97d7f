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
