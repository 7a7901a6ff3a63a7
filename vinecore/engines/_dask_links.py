"""The manager's side of the dask engine's comms, on the ``distributed.Client``'s event loop.

:class:`Links` keeps one dask comm per agent (``distributed.comm.connect`` with
the client's security, so ``tls://`` works as for the client itself). The
manager's thread hands it messages with :meth:`Links.send` (thread-safe; the
loop is woken once per burst and writes each worker's messages as one batch)
and receives everything through one queue, as tuples:

``("hello", addr, gen, info)``       an agent is ready (processes, nthreads, resources)
``("msgs", addr, gen, [message])``   a batch of reports from an agent
``("down", addr, gen, why)``         its comm ended or could not be opened
``("member+", addr)`` / ``("member-", addr)``   the scheduler's worker events

``gen`` tells connections to the same address apart. A comm quiet for
``_PING`` seconds gets a ping, so the agent can tell a live manager from a
vanished one. Membership comes from the scheduler's ``all`` event topic
(``add-worker`` / ``remove-worker``), subscribed once per client and shared
by every engine on that client.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import weakref
from typing import Any, Callable

__all__ = ["Links", "subscribe_membership", "unsubscribe_membership"]

_PING = 2.0
_CONNECT_DEADLINE = 30.0
_REFUSALS = 3  # connection refusals before a worker counts as gone


class _Link:
    __slots__ = ("addr", "gen", "comm", "outbox", "flushing", "last_write", "closed")

    def __init__(self, addr: str, gen: int, comm: Any) -> None:
        self.addr = addr
        self.gen = gen
        self.comm = comm
        self.outbox: list = []
        self.flushing = False
        self.last_write = time.monotonic()
        self.closed = False


class Links:
    def __init__(self, client: Any, run: str, inbox: Any, options: dict[str, Any]) -> None:
        self.client = client
        self.loop: asyncio.AbstractEventLoop = client.loop.asyncio_loop
        self.run = run
        self.inbox = inbox
        self.options = options
        self.links: dict[str, _Link] = {}  # only touched on the loop
        self.outq: collections.deque[tuple[str, int, Any]] = collections.deque()
        self.woken = False
        self.closed = False
        self.tasks: set[asyncio.Future] = set()
        self._call(self._start_pinger)

    # ------------------------------------------------- from the manager thread
    def send(self, addr: str, gen: int, msg: Any) -> None:
        self.outq.append((addr, gen, msg))
        if not self.woken:
            self.woken = True
            self.loop.call_soon_threadsafe(self._drain_out)

    def connect(self, addr: str, gen: int) -> None:
        self._call(lambda: self._task(self._connect(addr, gen)))

    def disconnect(self, addr: str, gen: int) -> None:
        self._call(lambda: self._task(self._disconnect(addr, gen)))

    def get_temp(self, addr: str, name: str, timeout: float = 120.0) -> bytes | None:
        """A temp's bytes from the agent on ``addr``, or None if it cannot give them."""
        fut = asyncio.run_coroutine_threadsafe(self._get_temp(addr, name), self.loop)
        try:
            return fut.result(timeout)
        except Exception:  # noqa: BLE001 - unreachable or timed out: the caller tries elsewhere
            fut.cancel()
            return None

    def close(self) -> None:
        if self.closed:
            return
        fut = asyncio.run_coroutine_threadsafe(self._close(), self.loop)
        try:
            fut.result(10)
        except Exception:  # noqa: BLE001 - the loop may be stopping
            pass

    def on_scheduler_event(self, event: Any) -> None:  # on the loop, from the shared subscription
        _, msg = event
        if not isinstance(msg, dict) or "worker" not in msg:
            return
        if msg.get("action") == "add-worker":
            self.inbox.put(("member+", msg["worker"]))
        elif msg.get("action") == "remove-worker":
            self.inbox.put(("member-", msg["worker"]))

    # ------------------------------------------------------------ on the loop
    def _call(self, fn: Callable[[], Any]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def _task(self, coro) -> asyncio.Future:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _drain_out(self) -> None:
        self.woken = False
        touched = []
        outq = self.outq
        while outq:
            addr, gen, msg = outq.popleft()
            link = self.links.get(addr)
            if link is None or link.gen != gen or link.closed:
                continue
            link.outbox.append(msg)
            if not link.flushing:
                link.flushing = True
                touched.append(link)
        for link in touched:
            self._task(self._flush(link))

    async def _flush(self, link: _Link) -> None:
        try:
            while link.outbox and not link.closed:
                batch, link.outbox = link.outbox, []
                link.last_write = time.monotonic()
                await link.comm.write(batch)
        except Exception as exc:  # noqa: BLE001 - the reader reports the comm's end
            await self._end(link, f"writing to the agent on {link.addr} failed: {type(exc).__name__}: {exc}")
        finally:
            link.flushing = False

    async def _connect(self, addr: str, gen: int) -> None:
        from distributed.comm import connect

        deadline = time.monotonic() + _CONNECT_DEADLINE
        refusals = 0
        why = "no answer"
        while not self.closed:
            if time.monotonic() > deadline or refusals >= _REFUSALS:
                self.inbox.put(("down", addr, gen, f"could not reach the vinecore agent on dask worker {addr}: {why}"))
                return
            try:
                comm = await connect(addr, timeout=10, **self.client.connection_args)
            except Exception as exc:  # noqa: BLE001 - refused, timed out, TLS failure
                refusals += 1
                why = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.2)
                continue
            try:
                await comm.write({"op": "vinecore_agent", "run": self.run, "reply": True, **self.options})
                first = await comm.read()
            except Exception as exc:  # noqa: BLE001
                refusals += 1
                why = f"{type(exc).__name__}: {exc}"
                await comm.close()
                await asyncio.sleep(0.2)
                continue
            if not first:  # the worker has not run our plugin's setup yet
                why = "the vinecore plugin is not set up on it"
                await comm.close()
                await asyncio.sleep(0.1)
                continue
            break
        else:
            return
        link = self.links[addr] = _Link(addr, gen, comm)
        for msg in first:
            if msg[0] == "hello":
                self.inbox.put(("hello", addr, gen, msg[1]))
        try:
            while True:
                batch = await comm.read()
                self.inbox.put(("msgs", addr, gen, batch))
        except Exception as exc:  # noqa: BLE001 - CommClosedError and friends
            if not link.closed:
                await self._end(link, f"the comm to dask worker {addr} broke ({type(exc).__name__}: {exc})")

    async def _end(self, link: _Link, why: str) -> None:
        if link.closed:
            return
        link.closed = True
        if self.links.get(link.addr) is link:
            del self.links[link.addr]
        self.inbox.put(("down", link.addr, link.gen, why))
        try:
            await link.comm.close()
        except Exception:  # noqa: BLE001
            pass

    async def _disconnect(self, addr: str, gen: int) -> None:
        link = self.links.get(addr)
        if link is not None and link.gen == gen:
            link.closed = True
            del self.links[addr]
            try:
                await link.comm.close()
            except Exception:  # noqa: BLE001
                pass

    async def _get_temp(self, addr: str, name: str) -> bytes | None:
        from ._dask_pool import call

        got = await call(self.client.rpc, addr, op="vinecore_temp", run=self.run, name=name)
        if isinstance(got, dict) and got.get("data") is not None:
            data = got["data"]
            return data if isinstance(data, bytes) else bytes(data)
        return None

    def _start_pinger(self) -> None:
        self._task(self._pinger())

    async def _pinger(self) -> None:
        while not self.closed:
            await asyncio.sleep(_PING / 2)
            now = time.monotonic()
            for link in list(self.links.values()):
                if not link.flushing and now - link.last_write > _PING and not link.closed:
                    link.outbox.append(("ping",))
                    link.flushing = True
                    self._task(self._flush(link))

    async def _close(self) -> None:
        self.closed = True
        links, self.links = list(self.links.values()), {}
        for link in links:
            link.closed = True
        await asyncio.gather(*(link.comm.close() for link in links), return_exceptions=True)
        for task in list(self.tasks):
            if task is not asyncio.current_task():
                task.cancel()


# ------------------------------------------------------------------ membership
class _Fanout:
    """One subscription to the scheduler's ``all`` topic per client, shared by its engines."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[Any], None]] = []

    def __call__(self, event: Any) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - one engine's trouble must not starve the others
                pass


_FANOUTS: "weakref.WeakKeyDictionary[Any, _Fanout]" = weakref.WeakKeyDictionary()
_FANOUT_LOCK = threading.Lock()


def subscribe_membership(client: Any, listener: Callable[[Any], None]) -> None:
    with _FANOUT_LOCK:
        fan = _FANOUTS.get(client)
        if fan is None:
            fan = _FANOUTS[client] = _Fanout()
            client.subscribe_topic("all", fan)
        fan.listeners.append(listener)


def unsubscribe_membership(client: Any, listener: Callable[[Any], None]) -> None:
    with _FANOUT_LOCK:
        fan = _FANOUTS.get(client)
        if fan is None:
            return
        if listener in fan.listeners:
            fan.listeners.remove(listener)
        if not fan.listeners:
            del _FANOUTS[client]
            try:
                client.unsubscribe_topic("all")
            except Exception:  # noqa: BLE001 - the client may be closing
                pass
