"""`execmesh broker`: the local Knative Kafka broker, ingress and one dispatcher per trigger.

    execmesh broker [--eventing-dir DIR] [--port P] [--partitions N] [--ingress-processes N]

The ingress runs in its own process (by default one), the dispatchers in this one: taking
events in and delivering them out then use two cores.

SIGINT/SIGTERM stop it cleanly: the ingress stops taking events, deliveries in flight get a
grace period, finished offsets are committed. Whatever did not finish is redelivered on the
next start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn
import uvloop
from kafka.errors import KafkaError

from execmesh.broker.dispatcher import AiohttpSender, Route, TriggerDispatcher
from execmesh.broker.ingress import build_app
from execmesh.broker.ingress_process import IngressProcesses
from execmesh.broker.kafka_io import DEFAULT_PARTITIONS, KafkaEventLog, ensure_topic
from execmesh.broker.manifests import Eventing, load_eventing
from execmesh.broker.readers import TopicReader, TriggerCursor
from execmesh.broker.resolve import DestinationError, resolve
from execmesh.errors import ConfigError, TransientError
from execmesh.settings import LocalConfig, Settings

log = logging.getLogger(__name__)

DRAIN_GRACE = 5.0


@dataclass(frozen=True)
class BrokerOptions:
    eventing: Eventing
    local: LocalConfig
    bootstrap: str
    host: str
    port: int
    partitions: int = DEFAULT_PARTITIONS
    max_pending: int = 2000
    ingress_processes: int = 1


def routes(eventing: Eventing, local: LocalConfig) -> list[Route]:
    built = []
    for trigger in eventing.triggers:
        delivery = eventing.delivery_of(trigger)
        try:
            subscriber = resolve(trigger.subscriber, local)
            sink = delivery.dead_letter_sink
            dead_letter_sink = None if sink is None else resolve(sink, local)
        except DestinationError as error:
            raise ConfigError(f"{trigger.source}: Trigger {trigger.name}: {error}") from error
        built.append(
            Route(
                name=trigger.name,
                filter=trigger.filter,
                subscriber=subscriber,
                delivery=delivery,
                dead_letter_sink=dead_letter_sink,
                reply_topic=eventing.broker_of(trigger).topic,
            )
        )
    return built


async def serve(options: BrokerOptions) -> None:
    eventing = options.eventing
    trigger_routes = routes(eventing, options.local)
    for broker in eventing.brokers:
        await asyncio.to_thread(ensure_topic, options.bootstrap, broker.topic, options.partitions)
    event_log = await asyncio.to_thread(KafkaEventLog, options.bootstrap)
    sender = AiohttpSender()
    loop = asyncio.get_running_loop()
    dispatchers, readers = _wire(options, trigger_routes, sender, event_log, loop)
    topics = {broker.path: broker.topic for broker in eventing.brokers}
    stopping = asyncio.Event()
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(topics, event_log),
            host=options.host,
            port=options.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            proxy_headers=False,
        )
    )
    _stop_on_signals(server, stopping, loop)
    ingress = IngressProcesses(
        options.host, options.port, topics, options.bootstrap, options.ingress_processes
    )
    try:
        if options.ingress_processes > 0:
            # Started now so that they load while the consumers settle their offsets; they
            # take traffic only once told to. In this thread, which lives as long as the
            # process: the children die with the thread that started them.
            ingress.start()
        await asyncio.gather(*(asyncio.to_thread(reader.start) for reader in readers))
        if options.ingress_processes == 0:
            _ready(options, len(dispatchers))
            await server.serve()
            return
        await asyncio.to_thread(ingress.serve)
        _ready(options, len(dispatchers))
        while not stopping.is_set():
            code = ingress.exited()
            if code is not None:
                raise TransientError(f"an ingress process exited with status {code}")
            for reader in readers:
                if not reader.alive:
                    raise TransientError(f"a reader of {reader.topic} stopped")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.5)
    finally:
        await asyncio.to_thread(ingress.stop)
        await _stop(dispatchers, readers)
        await sender.aclose()
        await asyncio.to_thread(event_log.close)


def _ready(options: BrokerOptions, triggers: int) -> None:
    log.info(
        "broker ready on http://%s:%d with %d trigger(s)", options.host, options.port, triggers
    )


def _stop_on_signals(
    server: uvicorn.Server, stopping: asyncio.Event, loop: asyncio.AbstractEventLoop
) -> None:
    """Our own handlers: uvicorn re-raises the signal it caught once it has stopped, which
    with the default handlers would kill the process before the dispatchers drained."""

    def stop(signum: int, frame: FrameType | None) -> None:
        if not server.should_exit:
            log.info("signal %d: stopping", signum)
        server.should_exit = True
        loop.call_soon_threadsafe(stopping.set)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def _wire(
    options: BrokerOptions,
    trigger_routes: list[Route],
    sender: AiohttpSender,
    event_log: KafkaEventLog,
    loop: asyncio.AbstractEventLoop,
) -> tuple[list[TriggerDispatcher], list[TopicReader]]:
    """A dispatcher and a cursor per trigger; one reader per broker topic for its cursors."""
    eventing = options.eventing
    dispatchers: list[TriggerDispatcher] = []
    cursors: dict[str, list[TriggerCursor]] = {}
    for trigger, route in zip(eventing.triggers, trigger_routes, strict=True):
        topic = eventing.broker_of(trigger).topic
        cursor = TriggerCursor(
            options.bootstrap, topic, trigger.consumer_group, loop, options.max_pending
        )
        dispatcher = TriggerDispatcher(route, sender, event_log, cursor.finished)
        cursor.connect(dispatcher.submit_batch, _in_flight(dispatcher))
        dispatchers.append(dispatcher)
        cursors.setdefault(topic, []).append(cursor)
    readers = [
        TopicReader(topic, topic_cursors, bootstrap=options.bootstrap)
        for topic, topic_cursors in cursors.items()
    ]
    return dispatchers, readers


def _in_flight(dispatcher: TriggerDispatcher) -> Callable[[], int]:
    return lambda: dispatcher.in_flight


async def _stop(dispatchers: list[TriggerDispatcher], readers: list[TopicReader]) -> None:
    for reader in readers:
        reader.stop_polling()
    await asyncio.gather(*(dispatcher.drain(DRAIN_GRACE) for dispatcher in dispatchers))
    await asyncio.gather(*(asyncio.to_thread(reader.close) for reader in readers))


def main(argv: list[str]) -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(prog="execmesh broker", description=__doc__.split("\n")[0])
    parser.add_argument("--eventing-dir", type=Path, default=settings.eventing_dir)
    parser.add_argument("--local-config", type=Path, default=settings.local_config_path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="default: broker.port of the local config")
    parser.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    parser.add_argument(
        "--ingress-processes",
        type=int,
        default=1,
        help="processes serving the ingress; 0 serves it in the dispatchers' process",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for chatty in ("kafka", "aiohttp.access"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        local = LocalConfig.load(args.local_config)
        eventing = load_eventing(args.eventing_dir, local.namespace)
        options = BrokerOptions(
            eventing=eventing,
            local=local,
            bootstrap=settings.kafka_bootstrap_servers,
            host=args.host,
            port=args.port or local.broker_port,
            partitions=args.partitions,
            ingress_processes=args.ingress_processes,
        )
        routes(eventing, local)
        # uvloop: the ingress and the deliveries share one loop, and it is the hot path.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(options))
    except ConfigError as error:
        log.error("%s", error)
        return 2
    except (TransientError, KafkaError) as error:
        log.error("broker stopped: %s", error)
        return 1
    return 0
