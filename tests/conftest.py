"""Fixtures shared by every test that talks to the real local services."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from execmesh import localservices
from execmesh.settings import Settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def services_down(settings: Settings) -> list[str]:
    """Why each service that does not answer its health check is down; empty when all are up."""
    layout = localservices.Layout(data_dir=settings.data_dir)
    return [
        f"{service.name} at {service.url}: {reason}"
        for service in localservices.services(settings, layout)
        if (reason := localservices.healthy(service)) is not None
    ]


@pytest.fixture(autouse=True)
def _require_services(request: pytest.FixtureRequest) -> None:
    # One clear failure instead of every client timing out on its own.
    if request.node.get_closest_marker("services") is None:
        return
    down: list[str] = request.getfixturevalue("services_down")
    if down:
        pytest.fail("services down (run `make services-up`): " + "; ".join(down), pytrace=False)


@pytest.fixture(scope="session")
def mongo_client(settings: Settings) -> Iterator[MongoClient[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(
        settings.mongodb_url, serverSelectionTimeoutMS=5000, tz_aware=True
    )
    client.admin.command("ping")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def mongo_database(mongo_client: MongoClient[dict[str, Any]]) -> Iterator[Database[dict[str, Any]]]:
    """A database of this test's own, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    try:
        yield mongo_client[name]
    finally:
        mongo_client.drop_database(name)
