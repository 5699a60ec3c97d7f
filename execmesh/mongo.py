"""The one way execmesh opens MongoDB: timezone-aware, bounded waits, from Settings."""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from execmesh.settings import Settings


def connect(settings: Settings) -> Database[dict[str, Any]]:
    client: MongoClient[dict[str, Any]] = MongoClient(
        settings.mongodb_url,
        tz_aware=True,
        serverSelectionTimeoutMS=5000,
        connectTimeoutMS=5000,
    )
    return client[settings.mongodb_database]
