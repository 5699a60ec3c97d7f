"""The outbox keeps its own list of what is left to publish, so that its periodic round reads
the requests in flight rather than every request ever recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.records import OUTBOX
from tests.integration.api.conftest import Api
from tests.integration.api.test_api_http import HELLO, SUBMIT

pytestmark = pytest.mark.services


def drain(api: Api) -> int:
    api.gateway.outbox.grace = timedelta(0)
    published: int = api.client.portal.call(api.gateway.outbox.drain)  # type: ignore[union-attr]
    return published


def test_a_published_submission_leaves_nothing_listed_to_publish(api: Api) -> None:
    answer = api.client.post(SUBMIT, json=HELLO, headers=api.auth(api.key("alice")))
    execution_id = answer.json()["id"]
    record = api.gateway.records.get(execution_id)
    assert record is not None
    api.gateway.records.mark_published(execution_id)  # what the request's background mark does

    assert api.database[OUTBOX].count_documents({}) == 0
    assert drain(api) == 0
    assert [e.subject for e in api.broker.sent] == [execution_id]


def test_a_submission_the_broker_refused_stays_listed_until_published(api: Api) -> None:
    api.broker.down = True
    answer = api.client.post(SUBMIT, json=HELLO, headers=api.auth(api.key("alice")))
    execution_id = answer.json()["id"]
    assert api.database[OUTBOX].count_documents({"_id": execution_id}) == 1

    api.broker.down = False
    assert drain(api) == 1
    assert api.database[OUTBOX].count_documents({}) == 0
    assert drain(api) == 0
    assert [e.subject for e in api.broker.sent] == [execution_id]


def test_an_entry_without_its_record_is_dropped_unsent(api: Api) -> None:
    # A crash between the entry and the record: the client never got its 202.
    api.database[OUTBOX].insert_one({"_id": "lost-1", "created_at": datetime.now(UTC)})

    assert drain(api) == 0
    assert api.broker.sent == []
    assert api.database[OUTBOX].count_documents({}) == 0


def test_records_left_unpublished_before_the_outbox_had_its_own_list_are_published(
    api: Api,
) -> None:
    api.broker.down = True
    answer = api.client.post(SUBMIT, json=HELLO, headers=api.auth(api.key("alice")))
    execution_id = answer.json()["id"]
    api.database[OUTBOX].delete_many({})  # as an older version recorded it: no entry

    api.gateway.records.ensure_indexes()
    api.broker.down = False

    assert drain(api) == 1
    assert [e.subject for e in api.broker.sent] == [execution_id]
