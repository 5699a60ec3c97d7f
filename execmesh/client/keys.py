"""API keys: random bearer tokens, stored only as their SHA-256, each naming a user and a role.

A key is shown once, when it is created; the ``api_keys`` collection holds its hash as ``_id``,
so looking a key up is one find by ``_id`` and creating one is one insert (no read-modify-write,
which FerretDB 1.x does not make atomic).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pymongo.database import Database
from pymongo.errors import PyMongoError

from execmesh.errors import TransientError

COLLECTION = "api_keys"
KEY_PREFIX = "em_"


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    user_id: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclass(frozen=True)
class ApiKey:
    key: str
    principal: Principal


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyStore:
    def __init__(self, database: Database[dict[str, Any]]) -> None:
        self.keys = database[COLLECTION]

    def create(self, user_id: str, role: Role = Role.USER, *, name: str = "") -> ApiKey:
        key = new_key()
        document = {
            "_id": hash_key(key),
            "user_id": user_id,
            "role": role.value,
            "name": name,
            "created_at": datetime.now(UTC),
        }
        try:
            self.keys.insert_one(document)
        except PyMongoError as error:
            raise TransientError(f"storing an API key: {error}") from error
        return ApiKey(key, Principal(user_id, role))

    def lookup(self, key: str) -> Principal | None:
        try:
            document = self.keys.find_one({"_id": hash_key(key)})
        except PyMongoError as error:
            raise TransientError(f"reading API keys: {error}") from error
        if document is None or document.get("revoked"):
            return None
        return Principal(str(document["user_id"]), Role(document["role"]))
