"""The local broker behaves as the Knative Kafka broker, on real Kafka."""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Callable

import pytest
from broker_harness import (
    Answer,
    BrokerProcess,
    Received,
    Subscriber,
    trigger,
)

pytestmark = pytest.mark.services

StartBroker = Callable[..., BrokerProcess]


def ids(received: list[Received]) -> set[str]:
    return {r.id for r in received}


def test_each_filter_dialect_selects_the_events_knative_would(
    start_broker: StartBroker, subscriber: Subscriber
) -> None:
    url = subscriber.url
    expected = {
        "/attributes": {"e1"},
        "/exact": {"e1", "e2"},
        "/prefix": {"e1", "e2", "e3"},
        "/suffix": {"e3", "e4"},
        "/all": {"e3"},
        "/any": {"e1", "e2", "e3", "e5"},
        "/not": {"e4", "e5"},
        "/everything": {"e1", "e2", "e3", "e4", "e5"},
    }
    broker = start_broker(
        [
            trigger(
                "attributes",
                url("/attributes"),
                filter={"attributes": {"type": "io.execmesh.a", "flag": ""}},
            ),
            trigger("exact", url("/exact"), filters=[{"exact": {"type": "io.execmesh.a"}}]),
            trigger("prefix", url("/prefix"), filters=[{"prefix": {"type": "io.execmesh."}}]),
            trigger("suffix", url("/suffix"), filters=[{"suffix": {"type": ".b"}}]),
            trigger(
                "all",
                url("/all"),
                filters=[{"all": [{"prefix": {"type": "io."}}, {"exact": {"subject": "s1"}}]}],
            ),
            trigger(
                "any",
                url("/any"),
                filters=[
                    {"any": [{"exact": {"type": "io.execmesh.a"}}, {"exact": {"subject": "s1"}}]}
                ],
            ),
            trigger("not", url("/not"), filters=[{"not": {"prefix": {"type": "io.execmesh."}}}]),
            trigger("everything", url("/everything")),
        ]
    )
    assert broker.post("e1", "io.execmesh.a", flag="x") == 202
    assert broker.post("e2", "io.execmesh.a") == 202
    assert broker.post("e3", "io.execmesh.b", subject="s1") == 202
    assert broker.post("e4", "other.b") == 202
    assert broker.post("e5", "other.c", subject="s1") == 202
    for path, wanted in expected.items():
        subscriber.wait_for(path, len(wanted))
    time.sleep(0.5)
    assert {path: ids(subscriber.at(path)) for path in expected} == expected


def failing_first(times: int, status: int = 503) -> Callable[[Received], Answer]:
    calls = {"n": 0}

    def answer(_: Received) -> Answer:
        calls["n"] += 1
        return (status, {}, b"busy") if calls["n"] <= times else (202, {}, b"")

    return answer


def gaps(received: list[Received]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(received)]


def test_retries_wait_the_configured_exponential_and_linear_backoff(
    start_broker: StartBroker, subscriber: Subscriber
) -> None:
    subscriber.answers["/exponential"] = failing_first(3)
    subscriber.answers["/linear"] = failing_first(3, status=429)
    broker = start_broker(
        [
            trigger(
                "exponential",
                subscriber.url("/exponential"),
                filters=[{"exact": {"type": "exp"}}],
                delivery={"retry": 3, "backoffPolicy": "exponential", "backoffDelay": "PT0.2S"},
            ),
            trigger(
                "linear",
                subscriber.url("/linear"),
                filters=[{"exact": {"type": "lin"}}],
                delivery={"retry": 3, "backoffPolicy": "linear", "backoffDelay": "PT1S"},
            ),
        ]
    )
    assert broker.post("x1", "exp") == 202
    assert broker.post("x2", "lin") == 202
    exponential = subscriber.wait_for("/exponential", 4)
    linear = subscriber.wait_for("/linear", 4)
    for measured, wanted in ((gaps(exponential), [0.4, 0.8, 1.6]), (gaps(linear), [1, 2, 3])):
        print("backoff measured", [round(g, 3) for g in measured], "configured", wanted)
        for gap, want in zip(measured, wanted, strict=True):
            # Wide enough for a busy 2-core box, narrow enough to tell 2^k from k from none:
            # 0.2 s run linearly is 0.2, 0.4, 0.6 s; 1 s run exponentially is 2, 4, 8 s.
            assert want - 0.1 <= gap <= want + 0.8
    time.sleep(0.5)
    assert len(subscriber.at("/exponential")) == 4


def test_non_retriable_answers_go_to_the_dead_letter_sink_at_once_with_the_error(
    start_broker: StartBroker, subscriber: Subscriber
) -> None:
    subscriber.answers["/reject"] = lambda _: (400, {}, b"no way")
    subscriber.answers["/chatty"] = lambda _: (200, {"content-type": "text/plain"}, b"OK")
    broker = start_broker(
        [
            trigger("reject", subscriber.url("/reject"), filters=[{"exact": {"type": "r"}}]),
            trigger("chatty", subscriber.url("/chatty"), filters=[{"exact": {"type": "c"}}]),
        ],
        # The broker's delivery gives the sink and a slow retry; the trigger inherits both.
        delivery={
            "retry": 5,
            "backoffDelay": "PT1S",
            "deadLetterSink": {"uri": subscriber.url("/dead")},
        },
    )
    assert broker.post("r1", "r") == 202
    assert broker.post("c1", "c") == 202
    letters = {r.id: r for r in subscriber.wait_for("/dead", 2)}
    rejected, chatty = letters["r1"].headers, letters["c1"].headers
    assert rejected["ce-knativeerrordest"] == subscriber.url("/reject")
    assert rejected["ce-knativeerrorcode"] == "400"
    assert base64.b64decode(rejected["ce-knativeerrordata"]) == b"no way"
    assert rejected["ce-type"] == "r"
    assert chatty["ce-knativeerrorcode"] == "200"
    assert base64.b64decode(chatty["ce-knativeerrordata"]) == b"OK"
    # At once: a retry would have waited backoffDelay * 2 = 2 s first.
    assert letters["r1"].at - subscriber.at("/reject")[0].at < 1.5
    time.sleep(1.0)
    assert len(subscriber.at("/reject")) == 1
    assert len(subscriber.at("/chatty")) == 1


def test_a_retriable_failure_is_dead_lettered_after_the_last_retry(
    start_broker: StartBroker, subscriber: Subscriber
) -> None:
    subscriber.answers["/down"] = lambda _: (500, {}, b"x" * 5000)
    broker = start_broker(
        [
            trigger(
                "down",
                subscriber.url("/down"),
                delivery={
                    "retry": 2,
                    "backoffDelay": "PT0.1S",
                    "deadLetterSink": {"uri": subscriber.url("/dead")},
                },
            )
        ]
    )
    assert broker.post("d1") == 202
    [letter] = subscriber.wait_for("/dead", 1)
    assert len(subscriber.at("/down")) == 3
    assert letter.headers["ce-knativeerrorcode"] == "500"
    assert len(base64.b64decode(letter.headers["ce-knativeerrordata"])) == 1024


def test_a_reply_event_goes_back_into_the_broker_and_reaches_its_trigger(
    start_broker: StartBroker, subscriber: Subscriber
) -> None:
    reply_headers = {
        "ce-specversion": "1.0",
        "ce-id": "pong-1",
        "ce-source": "/pinger",
        "ce-type": "pong",
        "ce-partitionkey": "k",
        "content-type": "application/json",
    }
    subscriber.answers["/ping"] = lambda _: (200, reply_headers, b'{"answer": 42}')
    broker = start_broker(
        [
            trigger("pinger", subscriber.url("/ping"), filters=[{"exact": {"type": "ping"}}]),
            trigger("ponged", subscriber.url("/pong"), filters=[{"exact": {"type": "pong"}}]),
        ]
    )
    assert broker.post("ping-1", "ping") == 202
    [pong] = subscriber.wait_for("/pong", 1)
    assert pong.id == "pong-1"
    assert pong.headers["ce-partitionkey"] == "k"
    assert pong.body == b'{"answer": 42}'


def test_a_subscriber_down_for_ten_seconds_receives_everything_once_it_is_back(
    start_broker: StartBroker,
) -> None:
    subscriber = Subscriber().start()
    port = subscriber.port
    subscriber.stop()
    broker = start_broker(
        [
            {
                "apiVersion": "eventing.knative.dev/v1",
                "kind": "Trigger",
                "metadata": {"name": "late"},
                "spec": {
                    "broker": "default",
                    "subscriber": {
                        "ref": {
                            "apiVersion": "serving.knative.dev/v1",
                            "kind": "Service",
                            "name": "late-service",
                        }
                    },
                    "delivery": {"retry": 40, "backoffPolicy": "linear", "backoffDelay": "PT0.2S"},
                },
            }
        ],
        services={"late-service": port},
    )
    sent = {f"late-{n}" for n in range(30)}
    for n, event_id in enumerate(sorted(sent)):
        assert broker.post(event_id, partitionkey=f"k{n % 5}") == 202
    time.sleep(10)
    back = Subscriber(port=port).start()
    try:
        got = back.wait_for("/", len(sent), timeout=30)
        time.sleep(0.3)
        assert ids(got) == sent
    finally:
        back.stop()


def test_events_with_one_partition_key_arrive_in_the_order_they_were_accepted(
    start_broker: StartBroker, subscriber: Subscriber
) -> None:
    broker = start_broker([trigger("ordered", subscriber.url("/"))])
    sent = [f"o-{n}" for n in range(100)]
    for event_id in sent:
        assert broker.post(event_id, partitionkey="same") == 202
    got = subscriber.wait_for("/", len(sent))
    assert [r.id for r in got] == sent


def test_sigterm_stops_the_broker_cleanly(
    start_broker: StartBroker, subscriber: Subscriber
) -> None:
    broker = start_broker([trigger("any", subscriber.url("/"))])
    assert broker.post("s1") == 202
    subscriber.wait_for("/", 1)
    assert broker.stop() == 0


def test_a_new_trigger_starts_at_the_latest_offset_and_an_old_one_resumes(
    start_broker: StartBroker, subscriber: Subscriber
) -> None:
    broker = start_broker([trigger("old", subscriber.url("/old"))])
    assert broker.post("before") == 202
    subscriber.wait_for("/old", 1)
    assert broker.stop() == 0
    broker.triggers.append(trigger("new", subscriber.url("/new")))
    broker.start()
    assert broker.post("after") == 202
    subscriber.wait_for("/new", 1)
    subscriber.wait_for("/old", 2)
    time.sleep(0.5)
    assert [r.id for r in subscriber.at("/new")] == ["after"]
    assert [r.id for r in subscriber.at("/old")] == ["before", "after"]
