"""Events from jobs to listeners: worker threads publish, async websocket/SSE handlers subscribe.

`publish` may be called from any thread: each subscriber's asyncio queue is fed through its own
event loop's `call_soon_threadsafe`, so a sampler step in a worker thread never touches the loop
directly. A subscriber for a client id gets the broadcasts (job_id None) and the events of jobs that
client submitted (ComfyUI sends progress only to the submitting client); a subscriber for None gets
everything. A slow subscriber whose queue passes MAX_PENDING events loses the oldest (progress is
a stream of snapshots, so dropping old ones is harmless); job_finished events are never dropped.
"""
from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

MAX_PENDING = 1000


@dataclass
class Event:
    """One message: the job it belongs to (None: for everybody), its name, JSON data, optional bytes
    (a preview image, sent by websockets as a binary frame)."""

    job_id: str | None
    event: str
    data: dict
    binary: bytes | None = None


class Subscription:
    """An async iterator of Events; `close()` (or `async with`) unsubscribes."""

    def __init__(self, bus: "EventBus", client_id: str | None, job_id: str | None):
        self.bus, self.client_id, self.job_id = bus, client_id, job_id
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def wants(self, event: Event, client_of_job: str | None) -> bool:
        if self.job_id is not None:
            return event.job_id == self.job_id
        if self.client_id is None or event.job_id is None:
            return True
        return client_of_job == self.client_id

    def _put(self, event: Event) -> None:  # runs on self.loop
        if self.queue.qsize() >= MAX_PENDING:
            try:
                self.queue.get_nowait()
            except asyncio.QueueEmpty:
                pass
        self.queue.put_nowait(event)

    def __aiter__(self):
        return self

    async def __anext__(self) -> Event:
        return await self.queue.get()

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after `timeout` seconds."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def close(self) -> None:
        self.bus._remove(self)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        self.close()


class EventBus:
    """Fan-out of job events to async subscribers; thread-safe publish."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self._client_of: dict[str, str | None] = {}  # job id -> the client id that submitted it
        self.forward = None  # worker processes: a callable(Event) storing job events for the server (relay.py)

    def bind(self, job_id: str, client_id: str | None) -> None:
        """Remember which client submitted a job, so its events reach that client's subscribers."""
        with self._lock:
            self._client_of[job_id] = client_id
            if len(self._client_of) > 10000:  # forget the oldest half
                for key in list(self._client_of)[:5000]:
                    del self._client_of[key]

    def publish(self, job_id: str | None, event: str, data: dict, binary: bytes | None = None) -> None:
        """Send an event to every interested subscriber (callable from any thread)."""
        message = Event(job_id, event, data, binary)
        if self.forward is not None and job_id is not None:
            self.forward(message)
        with self._lock:
            subs = list(self._subs)
            client = self._client_of.get(job_id) if job_id is not None else None
        for sub in subs:
            if sub.wants(message, client):
                try:
                    sub.loop.call_soon_threadsafe(sub._put, message)
                except RuntimeError:  # that loop is closed: the subscriber is gone
                    self._remove(sub)

    def subscribe(self, client_id: str | None = None, job_id: str | None = None) -> Subscription:
        """A Subscription (async iterator of Events) for a client id (None: all events) or one job.
        Must be called inside the event loop that will read it; registers at once, so no event
        published after this call is missed."""
        sub = Subscription(self, client_id, job_id)
        with self._lock:
            self._subs.append(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subs)
