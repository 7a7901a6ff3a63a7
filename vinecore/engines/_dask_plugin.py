"""How a dask worker is given the vinecore agent: a ``WorkerPlugin`` and two server handlers.

:class:`AgentPlugin` is registered once per run (``Client.register_plugin``),
so it reaches every current and future worker. Its ``setup`` adds handlers to
the worker's server, the way dask's own shuffle extension does:

``vinecore_agent``   the manager's comm to the run's :class:`~._dask_pool.Agent` (kept open)
``vinecore_relay``   the same conversation one call at a time, relayed by the scheduler
``vinecore_temp``    a temp's bytes, for another agent or the manager

Its ``teardown`` (the plugin unregistered when the run ends) stops the run's
agent. :func:`hold` is the long-running task that marks a worker in use.
"""

from __future__ import annotations

import os
import time
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from ._dask_pool import AGENTS, Agent, wrap

__all__ = ["AgentPlugin", "agent_stats", "held_temps", "hold"]


class _Host:
    """The handlers added to one dask worker's server; they find the run's agent."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    async def agent(self, comm: Any, run: str, processes: int | None = None, spill_mb: int = 1024,
                    cores: int | None = None) -> Any:
        from distributed.core import Status

        nthreads = max(1, int(getattr(self.worker.state, "nthreads", 1) or 1))
        n = processes or nthreads
        old = AGENTS.pop((self.worker.address, run), None)
        if old is not None:  # the manager reconnected: the old stream's work is written off
            await old.close()
        agent = AGENTS[(self.worker.address, run)] = Agent(self.worker, run, comm, n,
                                                            cores or max(1, nthreads // n), spill_mb)
        await agent.serve()
        return Status.dont_reply

    async def relay(self, run: str, batch: list, wait: float = 0.0, processes: int | None = None,
                    spill_mb: int = 1024, cores: int | None = None) -> Any:
        """The same conversation as :meth:`agent`, one call at a time, for a manager that reaches this
        worker only through the scheduler (``Scheduler.proxy``, as dask's own actors and gathers do)."""
        key = (self.worker.address, run)
        agent = AGENTS.get(key)
        if agent is None or agent.closed:
            if batch and batch[0][0] != "open":
                return [("gone", f"run {run} has no agent on {self.worker.address}")]
            nthreads = max(1, int(getattr(self.worker.state, "nthreads", 1) or 1))
            n = processes or nthreads
            agent = AGENTS[key] = Agent(self.worker, run, None, n, cores or max(1, nthreads // n), spill_mb)
            agent.start_relayed()
        return await agent.relay([m for m in batch if m[0] != "open"], wait)

    async def temp(self, run: str, name: str) -> dict:
        agent = AGENTS.get((self.worker.address, run))
        if agent is None:
            return {"missing": f"run {run} has no agent on {self.worker.address}"}
        data = agent.temps.get(name)
        if data is None:
            return {"missing": f"{name} is not held on {self.worker.address}"}
        return {"data": wrap(data)}


class AgentPlugin(WorkerPlugin):
    """Registered once per run: gives every worker the agent handlers; its removal ends the run's agent."""

    def __init__(self, run: str) -> None:
        self.run = run

    def setup(self, worker: Any) -> None:
        current = worker.handlers.get("vinecore_agent")
        if not isinstance(getattr(current, "__self__", None), _Host):
            host = _Host(worker)
            worker.handlers["vinecore_agent"] = host.agent
            worker.handlers["vinecore_temp"] = host.temp
            worker.handlers["vinecore_relay"] = host.relay

    async def teardown(self, worker: Any) -> None:
        agent = AGENTS.pop((worker.address, self.run), None)
        if agent is not None:
            await agent.close()


def agent_stats(run: str, dask_worker: Any = None) -> dict[str, Any]:
    """Pids of this worker's library processes for ``run`` and what it holds (tests, diagnostics)."""
    agent = AGENTS.get((dask_worker.address, run)) if dask_worker is not None else None
    if agent is None:
        return {"worker_pid": os.getpid(), "processes": {}, "temps": 0}
    return {"worker_pid": os.getpid(),
            "processes": {p.wid: p.popen.pid for p in agent.procs if p.popen is not None and p.alive},
            "temps": len(agent.temps.mem) + len(agent.temps.disk), "temp_bytes": agent.temps.nbytes,
            "spilled": len(agent.temps.disk)}


def held_temps(dask_worker: Any = None) -> int:
    """How many temps the vinecore agents of every run hold on this worker (for tests: ``Client.run``)."""
    return sum(len(a.temps.mem) + len(a.temps.disk) for (addr, _), a in list(AGENTS.items())
               if dask_worker is None or addr == dask_worker.address)


def hold(run: str) -> str:
    """A dask task that lasts as long as the run's agent on its worker (submitted once per worker).

    It secedes from the worker's thread pool, so it takes no thread from dask's own tasks, and a
    worker with a long-running task is never picked by adaptive scaling (``Cluster.adapt``, which
    would otherwise see an idle worker: vinecore's attempts are not dask tasks) to be retired."""
    from distributed import get_worker, secede

    address = get_worker().address
    secede()
    while (address, run) in AGENTS:
        time.sleep(0.5)
    return address
