"""``execmesh keys create`` stores a key the API then accepts, and only its hash."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.database import Database

from execmesh.client.keys import KeyStore, Role, hash_key
from execmesh.client.keys_cli import main

pytestmark = pytest.mark.services


def test_a_created_key_is_printed_once_and_stored_hashed(
    mongo_database: Database[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MONGODB_DATABASE", mongo_database.name)
    assert main(["create", "--user", "alice", "--admin"]) == 0
    key = capsys.readouterr().out.strip()
    [stored] = list(mongo_database["api_keys"].find())
    assert stored["_id"] == hash_key(key) and key not in str(stored)
    principal = KeyStore(mongo_database).lookup(key)
    assert principal is not None and (principal.user_id, principal.role) == ("alice", Role.ADMIN)
    assert KeyStore(mongo_database).lookup(key + "x") is None
