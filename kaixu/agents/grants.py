"""Who an agent works for. Two kinds of short-lived secrets, both random and held in this process only:

- the *call token*: the credential kaixu's own attempt presents to the agent endpoint of its loopback server
  (`Authorization: Bearer`), naming the outer request (a `Call`, weakly held: a request that ended is gone);
- the *run credential* (`kxa-...`): the key the agent process is given (`ANTHROPIC_API_KEY`) for its own model
  calls. The auth step (kaixu/addons/auth.py) takes it for the outer request's caller, so each inner call is an
  ordinary kaixu request under the caller's key (routed, limited, budgeted, priced, recorded), with the outer
  request as its parent; the caller's own key never reaches the agent. It is revoked when the run ends and
  expires on its own after the run's timeout.

An `AgentRun` sums what its inner calls cost into the outer request's bill (`Bill.inner_cost_micros`)."""

from __future__ import annotations

import asyncio
import secrets
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kaixu.formats.canonical import Usage

if TYPE_CHECKING:
    from kaixu.call import Call

CREDENTIAL_PREFIX = "kxa-"

_calls: weakref.WeakValueDictionary[str, Call] = weakref.WeakValueDictionary()
_tokens: weakref.WeakKeyDictionary[Call, str] = weakref.WeakKeyDictionary()
_runs: dict[str, AgentRun] = {}


def call_token(call: Call) -> str:
    """The outer request's token for the agent endpoint: the same for every attempt of the call."""
    token = _tokens.get(call)
    if token is None:
        token = _tokens[call] = secrets.token_urlsafe(24)
        _calls[token] = call
    return token


def call_for_token(token: str) -> Call | None:
    return _calls.get(token)


@dataclass(eq=False)
class AgentRun:
    """One agent process's credential and the model calls it made with it."""

    outer: Call
    credential: str
    expires: float
    """`time.monotonic()` after which the credential is refused even if the run was never closed."""
    pending: int = 0
    calls: int = 0
    usage: Usage = field(default_factory=Usage)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    def began(self) -> None:
        """An inner call was authenticated with this run's credential (the auth step)."""
        self.pending += 1
        self.calls += 1
        self._idle.clear()

    def ended(self, cost_micros: int | None, usage: Usage | None) -> None:
        """An inner call was settled (the settle step): its cost joins the outer request's bill."""
        self.pending = max(0, self.pending - 1)
        bill = self.outer.bill
        if usage is not None:
            self.usage = self.usage + usage
        bill.inner_calls += 1
        if usage is not None and cost_micros is None:
            bill.inner_unpriced = True
        bill.inner_cost_micros += cost_micros or 0
        if self.pending == 0:
            self._idle.set()

    async def settled(self, timeout_s: float) -> bool:
        """Wait (bounded) until every inner call of the run was settled: the CLI has its answer before kaixu's
        settle step records it."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


def open_run(outer: Call, ttl_s: float) -> AgentRun:
    run = AgentRun(outer, CREDENTIAL_PREFIX + secrets.token_urlsafe(32), time.monotonic() + ttl_s)
    _runs[run.credential] = run
    return run


def close_run(run: AgentRun) -> None:
    _runs.pop(run.credential, None)


def run_for_credential(key: str) -> AgentRun | None:
    """The live run whose credential this is (None: unknown, closed or expired)."""
    run = _runs.get(key)
    if run is None:
        return None
    if time.monotonic() > run.expires:
        close_run(run)
        return None
    return run
