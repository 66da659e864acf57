"""The relay: domain events from the store (the outbox) to NATS JetStream.

The store is the record; the bus is a transport that can be replayed from it. The relay
reads audit records in ``seq`` order past its position, derives their events
(billing.events) and publishes each one to ``<subject>.<type>`` (``dce.events.call.completed``)
with ``Nats-Msg-Id`` = the event id, so JetStream drops a copy sent twice within its
duplicate window, and the addressee in the ``DCE-Account`` header.

Order and gaps: publishes are pipelined (``relay_inflight`` awaiting their acks at once), and
each carries ``Nats-Expected-Last-Sequence``: the stream stores it only right after the one
before. If any publish fails (a timeout, the server gone, a sequence that does not match),
every later one is refused too, and the relay starts again from what the stream really holds:
the event id of the stream's last message. So the stream holds each event once, in order,
with no gap, whatever fails in between.

Position: after each batch of records is acknowledged the relay saves the last one's seq in
the store (``relay_positions``). On a start, a reconnect or a failure it takes its position
from the stream's last message when there is one (so a stream that lost its tail, e.g. a
server restarted before its flush, gets it again from the store, and one that has more than
the saved position gets no copies); from the saved position when the stream's messages are
gone (expired or purged: the operator's retention, not a loss); from the start for a new,
empty stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from billing.events import DomainEvent, derive, parse_position, position
from billing.store import Store, StoreUnavailable

log = logging.getLogger("exchange.relay")
_encode = msgspec.json.Encoder().encode


class Relay:
    def __init__(self, store: Store, url: str, stream: str = "DCE_EVENTS", subject: str = "dce.events",
                 batch: int = 500, inflight: int = 256, max_age_s: int = 7 * 86_400,
                 head: Callable[[], int] | None = None, poll_s: float = 0.05, clock_ns: Callable[[], int] | None = None) -> None:
        self.store, self.url, self.stream, self.subject = store, url, stream, subject
        self.batch, self.inflight, self.max_age_s = batch, inflight, max_age_s
        self.head = head  # the writer's last committed seq, when in the same process (saves empty polls)
        self.poll_s = poll_s
        self.name = f"nats:{stream}"
        self.at: tuple[int, int] = (0, -1)  # (seq, index) of the last event the stream holds
        self.last_seq = 0  # the stream's sequence of that message
        self.published = 0
        self.resyncs = 0
        self.up = False
        self._clock = clock_ns
        self._task: asyncio.Task | None = None
        self._nc: Any = None  # nats.aio.client.Client (imported when the relay starts)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5.0)
            self._task = None
        await self._close()

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        self.up = False
        if nc is not None and not await close_client(nc):
            log.warning("event_relay_close_stuck")

    # ------------------------------------------------------------------ the loop
    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                js = await self._connect()
                await self._sync(js)
                self.up = True
                delay = 0.1
                await self._pump(js)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the bus or the store failed: start again from what the stream holds
                self.resyncs += 1
                log.warning("event_relay_resync", extra={"error": f"{type(exc).__name__}: {exc}", "at": self.at[0]})
                await self._close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _connect(self):  # -> nats.js.JetStreamContext
        import nats

        if self._nc is None:
            self._nc = await bounded(nats.connect(self.url, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False,
                                                  name="dce-event-relay"), 10.0)
        js = self._nc.jetstream(timeout=5, publish_async_max_pending=max(1, self.inflight))
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(StreamConfig(name=self.stream, subjects=[self.subject + ".>"], storage=StorageType.FILE,
                                             max_age=float(self.max_age_s), duplicate_window=120.0))
        return js

    async def _sync(self, js) -> None:
        """Take the position from the stream's last message (see the module's docstring)."""
        from nats.js.errors import NotFoundError

        info = await js.stream_info(self.stream)
        last = info.state.last_seq
        self.last_seq = last
        saved = await self.store.relay_position(self.name)
        if last == 0:
            self.at = (0, -1)
            return
        try:
            msg = await js.get_msg(self.stream, seq=last)
            self.at = parse_position((msg.headers or {}).get("Nats-Msg-Id", ""))
            if self.at == (0, 999):
                raise ValueError("not an event")
        except (NotFoundError, ValueError):
            self.at = (saved or 0, 999)

    async def _pump(self, js) -> None:
        while True:
            seq, index = self.at
            from_seq = seq if index < 999 else seq + 1
            if self.head is not None and self.head() < from_seq:
                await asyncio.sleep(self.poll_s)
                continue
            rows = await self.store.event_rows(None, from_seq, self.batch)
            if not rows:
                await asyncio.sleep(self.poll_s)
                continue
            events = [ev for row in rows for i, ev in enumerate(derive(row)) if (row.seq, i) > self.at]
            if events:
                await self._publish(js, events)
            await self._save(rows[-1].seq)
            self.at = parse_position(position(rows[-1].seq))

    async def _publish(self, js, events: list[DomainEvent]) -> None:
        """Publish ``events`` in order, pipelined; raises (after every ack is in) if any failed."""
        pending: list[tuple[DomainEvent, asyncio.Future]] = []
        expected = self.last_seq
        for ev in events:
            headers = {"Nats-Msg-Id": ev.id, "Nats-Expected-Last-Sequence": str(expected), "DCE-Account": ev.account or ""}
            # bounded: the client awaits its flusher, which waits for the socket to drain (a server
            # that stops reading would hold the relay, and its stop, for ever)
            fut = await bounded(js.publish_async(f"{self.subject}.{ev.type}", _encode(ev), headers=headers, wait_stall=10.0), 15.0)
            pending.append((ev, fut))
            expected += 1
        failure: BaseException | None = None
        for ev, fut in pending:
            try:
                ack = await asyncio.wait_for(fut, 10.0)
            except Exception as exc:  # noqa: BLE001 - this one and every later one are not stored
                failure = failure or exc
                continue
            if failure is None:
                self.at = parse_position(ev.id)
                self.last_seq = ack.seq
                self.published += 1
        if failure is not None:
            raise failure

    async def _save(self, seq: int) -> None:
        try:
            await self.store.save_relay_position(self.name, seq, self._clock() if self._clock else time.time_ns())
        except StoreUnavailable:
            pass  # the stream's last message is the position that matters; this one is saved next time

    def gauges(self) -> dict[str, int]:
        return {"events_relay_up": int(self.up), "events_relay_position": self.at[0], "events_relayed": self.published,
                "events_relay_resyncs": self.resyncs}


async def bounded(aw: Any, timeout_s: float) -> Any:
    """``aw``'s result, or ``TimeoutError`` after ``timeout_s``, bounded even if ``aw`` swallows
    its cancellation (``asyncio.wait_for`` then waits for it to finish: for ever, at worst)."""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        task.cancel()  # not awaited
        task.add_done_callback(_retrieve)
        raise TimeoutError(f"no answer within {timeout_s} s")
    return task.result()


async def close_client(nc: Any, timeout_s: float = 2.0) -> bool:
    """Close a NATS client, bounded in time whatever the client does; whether it closed.

    Not ``asyncio.wait_for(nc.close(), t)``: at its deadline ``wait_for`` cancels the close and
    then waits for it to *finish*, and nats-py's close can swallow a cancellation (its
    ``_flush_pending`` catches ``CancelledError``) and go on to await the socket's ``drain()`` and
    ``wait_closed()``, which do not end while the server reads nothing more. Here the close is
    waited for with a deadline only; past it the socket is aborted (pending bytes dropped, so
    those awaits end at once) and the close gets a second, short deadline; a close still running
    then is cancelled and left."""
    closing = asyncio.ensure_future(nc.close())
    closing.add_done_callback(_retrieve)
    done, _ = await asyncio.wait({closing}, timeout=timeout_s)
    if not done:
        _abort(nc)
        done, _ = await asyncio.wait({closing}, timeout=1.0)
        if not done:
            closing.cancel()
    return bool(done)


def _retrieve(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()  # already gone, or failed closing: dropped either way, not "never retrieved"


def _abort(nc: Any) -> None:
    """Drop a NATS client's socket at once (nats-py keeps its asyncio writer in
    ``_transport._io_writer``); nothing if the client has none."""
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is not None:
        transport.abort()
