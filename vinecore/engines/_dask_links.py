"""The manager's side of the dask engine's comms, on the ``distributed.Client``'s event loop.

:class:`Links` keeps one dask comm per agent (``distributed.comm.connect`` with
the client's security, so ``tls://`` works as for the client itself). The
manager's thread hands it messages with :meth:`Links.send` (thread-safe; the
loop is woken once per burst and writes each worker's messages as one batch)
and receives everything through one queue, as tuples:

``("hello", addr, gen, info)``       an agent is ready (processes, nthreads, resources, host)
``("msgs", addr, gen, [message])``   a batch of reports from an agent
``("down", addr, gen, why)``         its comm ended or could not be opened
``("member+", addr)`` / ``("member-", addr)``   the scheduler's worker events

``gen`` tells connections to the same address apart. A comm quiet for
``_PING`` seconds gets a ping, so the agent can tell a live manager from a
vanished one.

Where the manager cannot open connections to the workers (dask-gateway and
other setups where only the scheduler is reachable, or a client made with
``direct_to_workers=False``), the same messages go through the scheduler,
one ``Scheduler.proxy`` call per batch, as dask's own actors and gathers do
there: a call carries the manager's batch and returns the agent's reports,
and one call per worker is always waiting (up to ``_LONG_POLL`` s) for reports. Membership comes from the scheduler's ``all`` event topic
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

__all__ = ["Links", "open_client", "subscribe_membership", "unsubscribe_membership"]

_PING = 2.0
_CONNECT_DEADLINE = 30.0
_REFUSALS = 3  # failed connections before a worker counts as unreachable directly
_LONG_POLL = 1.0  # seconds an agent holds a relayed call while it has nothing to report


class _Link:
    __slots__ = ("addr", "gen", "comm", "outbox", "flushing", "last_write", "closed", "relayed")

    def __init__(self, addr: str, gen: int, comm: Any) -> None:
        self.addr = addr
        self.gen = gen
        self.comm = comm
        self.outbox: list = []
        self.flushing = False
        self.last_write = time.monotonic()
        self.closed = False
        self.relayed = False  # through the scheduler (Scheduler.proxy) instead of a comm of our own


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
                if link.relayed:
                    self._deliver(link, await self._relay(link.addr, batch, 0.0))
                else:
                    await link.comm.write(batch)
        except Exception as exc:  # noqa: BLE001 - the reader reports the comm's end
            await self._end(link, f"writing to the agent on {link.addr} failed: {type(exc).__name__}: {exc}")
        finally:
            link.flushing = False

    async def _connect(self, addr: str, gen: int) -> None:
        direct = getattr(self.client, "direct_to_workers", None)
        if direct is not False:
            comm, first, why, reachable = await self._open_direct(addr)
            if comm is not None:
                await self._run_direct(addr, gen, comm, first)
                return
            if direct or reachable:  # direct was demanded, or the worker answered but never set us up
                self.inbox.put(("down", addr, gen, f"could not reach the vinecore agent on dask worker {addr}: "
                                                   f"{why}"))
                return
        await self._run_relayed(addr, gen)  # this network only lets the scheduler reach the workers

    async def _open_direct(self, addr: str) -> tuple[Any, Any, str, bool]:
        """``(comm, first message, why not, reachable)``: a comm to the run's agent on ``addr``, or why not."""
        from distributed.comm import connect

        deadline = time.monotonic() + _CONNECT_DEADLINE
        refusals = 0
        reachable = False
        why = "no answer"
        while not self.closed and time.monotonic() < deadline and refusals < _REFUSALS:
            try:
                comm = await connect(addr, timeout=5, **self.client.connection_args)
            except Exception as exc:  # noqa: BLE001 - refused, timed out, TLS failure
                refusals += 1
                why = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.2)
                continue
            reachable = True
            try:
                await comm.write({"op": "vinecore_agent", "run": self.run, "reply": True, **self.options})
                first = await comm.read()
            except Exception as exc:  # noqa: BLE001
                refusals += 1
                why = f"{type(exc).__name__}: {exc}"
                await comm.close()
                await asyncio.sleep(0.2)
                continue
            if first:
                return comm, first, "", True
            why = "the vinecore plugin is not set up on it"  # the worker has not run our plugin yet
            await comm.close()
            await asyncio.sleep(0.1)
        return None, None, why, reachable

    async def _run_direct(self, addr: str, gen: int, comm: Any, first: Any) -> None:
        link = self.links[addr] = _Link(addr, gen, comm)
        self._deliver(link, first)
        try:
            while True:
                self._deliver(link, await comm.read())
        except Exception as exc:  # noqa: BLE001 - CommClosedError and friends
            if not link.closed:
                await self._end(link, f"the comm to dask worker {addr} broke ({type(exc).__name__}: {exc})")

    async def _run_relayed(self, addr: str, gen: int) -> None:
        link = self.links[addr] = _Link(addr, gen, None)
        link.relayed = True
        deadline = time.monotonic() + _CONNECT_DEADLINE
        try:
            while True:
                reports = await self._relay(addr, [("open",)], 0.0)
                if reports is not None:
                    break
                if time.monotonic() > deadline:  # the worker never ran our plugin's setup
                    raise RuntimeError("the vinecore plugin is not set up on it")
                await asyncio.sleep(0.1)
            self._deliver(link, reports)
            while not link.closed and not self.closed:
                self._deliver(link, await self._relay(addr, [], _LONG_POLL))
        except Exception as exc:  # noqa: BLE001 - the scheduler could not reach the worker
            if not link.closed:
                await self._end(link, f"dask worker {addr} could not be reached through the scheduler "
                                      f"({type(exc).__name__}: {exc})")

    async def _relay(self, addr: str, batch: list, wait: float) -> Any:
        return await self.client.scheduler.proxy(
            msg={"op": "vinecore_relay", "run": self.run, "batch": batch, "wait": wait, **self.options}, worker=addr)

    def _deliver(self, link: _Link, reports: Any) -> None:
        msgs = []
        for msg in reports or ():
            if msg[0] == "hello":
                self.inbox.put(("hello", link.addr, link.gen, msg[1]))
            elif msg[0] == "gone":
                raise ConnectionError(msg[1])
            else:
                msgs.append(msg)
        if msgs:
            self.inbox.put(("msgs", link.addr, link.gen, msgs))

    async def _end(self, link: _Link, why: str) -> None:
        if link.closed:
            return
        link.closed = True
        if self.links.get(link.addr) is link:
            del self.links[link.addr]
        self.inbox.put(("down", link.addr, link.gen, why))
        await self._hang_up(link)

    async def _hang_up(self, link: _Link) -> None:
        try:
            if link.relayed:
                await self._relay(link.addr, [("bye",)], 0.0)
            else:
                await link.comm.close()
        except Exception:  # noqa: BLE001 - gone already
            pass

    async def _disconnect(self, addr: str, gen: int) -> None:
        link = self.links.get(addr)
        if link is not None and link.gen == gen:
            link.closed = True
            del self.links[addr]
            await self._hang_up(link)

    async def _get_temp(self, addr: str, name: str) -> bytes | None:
        from ._dask_pool import call

        link = self.links.get(addr)
        msg = {"op": "vinecore_temp", "run": self.run, "name": name}
        got = None
        if link is None or not link.relayed:
            try:
                got = await call(self.client.rpc, addr, **msg)
            except Exception:  # noqa: BLE001 - not reachable directly: through the scheduler
                got = None
        if got is None:
            got = await self.client.scheduler.proxy(msg=msg, worker=addr)
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
                if not link.flushing and now - link.last_write > _PING and not link.closed and not link.relayed:
                    link.outbox.append(("ping",))
                    link.flushing = True
                    self._task(self._flush(link))

    async def _close(self) -> None:
        self.closed = True
        links, self.links = list(self.links.values()), {}
        for link in links:
            link.closed = True
        await asyncio.gather(*(self._hang_up(link) for link in links), return_exceptions=True)
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


# ---------------------------------------------------------------------- clients
def open_client(scheduler: str | None, scheduler_file: str | None, security: Any, n_workers: int | None,
                cluster_options: dict[str, Any]) -> tuple[Any, Any]:
    """``(client, cluster)``: a client of that scheduler, or of a ``LocalCluster`` started here (no address)."""
    from ..exceptions import EngineError

    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - distributed is a dependency of ddr
        raise EngineError("the dask engine needs dask.distributed: pip install distributed") from exc
    if not (scheduler or scheduler_file):
        opts = {"n_workers": n_workers or 2, "threads_per_worker": 1, "processes": True,
                "dashboard_address": None, "host": "127.0.0.1"}
        opts.update(cluster_options)
        cluster = distributed.LocalCluster(**opts)
        return distributed.Client(cluster), cluster
    try:
        return distributed.Client(scheduler, scheduler_file=scheduler_file, security=security, timeout="30s"), None
    except Exception as exc:  # noqa: BLE001 - distributed raises several kinds here
        where = scheduler or f"the scheduler in {scheduler_file}"
        hint = "Check the address and that the scheduler is running (`dask scheduler`)."
        if "TLS" in str(exc) or str(scheduler or "").startswith("tls://"):
            hint = ("A tls:// scheduler needs certificates: ddr run --tls-ca-file CA.pem --tls-cert CERT.pem "
                    "--tls-key KEY.pem, or security=distributed.security.Security(...) in Python.")
        raise EngineError(f"could not connect to the dask scheduler at {where}: {type(exc).__name__}: {exc}. "
                          f"{hint}") from exc
