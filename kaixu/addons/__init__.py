"""kaixu's steps: hook classes only, one concern each, assembled here in the order a request meets them (see
docs/architecture.md). No step imports another; what several read lives below them (kaixu/respond.py,
kaixu/request_facts.py, kaixu/routing/, kaixu/formats/doors.py...).

mitmproxy sees one addon, the `Chain` (kaixu/chain.py), which runs these steps in this order and fails closed."""

from __future__ import annotations

from kaixu.addons.admin import Admin
from kaixu.addons.auth import Auth
from kaixu.addons.body import Body
from kaixu.addons.budgets import Budgets
from kaixu.addons.caller_rules import CallerRules
from kaixu.addons.connections import Connections
from kaixu.addons.counters import CounterBackend
from kaixu.addons.dialect import Dialect
from kaixu.addons.dispatch import Dispatch
from kaixu.addons.errors import Errors
from kaixu.addons.forward import Forward
from kaixu.addons.ingress import Ingress
from kaixu.addons.jobs import Jobs
from kaixu.addons.ledger_writer import LedgerWriter
from kaixu.addons.local import Local
from kaixu.addons.loopback import Loopback
from kaixu.addons.policy_file import PolicyFile
from kaixu.addons.rate_limits import RateLimits
from kaixu.addons.responses_keeper import ResponsesKeeper
from kaixu.addons.responses_recall import ResponsesRecall
from kaixu.addons.retries import Retries
from kaixu.addons.router import Router
from kaixu.addons.seat_limits import Seats
from kaixu.addons.sessions import SessionHistory, SessionRecord
from kaixu.addons.settle import Settle
from kaixu.addons.store_choice import StoreChoice
from kaixu.addons.store_keys import StoreKeys
from kaixu.addons.stream import Stream
from kaixu.addons.ui import Ui
from kaixu.chain import Chain
from kaixu.gateway import Gateway


def build_steps(gateway: Gateway) -> list[object]:
    return [
        PolicyFile(gateway),  # the policy, hot reload
        Loopback(gateway),  # the mock provider and the stream relay
        LedgerWriter(gateway),  # the ledger: batched writes, flushed at shutdown, retention
        StoreKeys(gateway),  # the store's keys (kaixu keys create), reloaded every second for the auth step
        CounterBackend(gateway),  # the counters of budgets and rate limits (`store:`)
        Connections(gateway),  # client connections: cap, header and idle timeouts, HTTP/2 prior knowledge
        Retries(gateway),  # (its response hooks run first) a failed first attempt with a plan: the plan goes on
        Ingress(gateway),  # request id, CORS, /health, /metrics (request head)
        Forward(gateway),  # the forward listeners: which hosts are intercepted, the proxy credential
        Admin(gateway),  # the admin API (/api/costs, /api/requests...): admin keys only, before client auth
        Ui(gateway),  # the web console at /ui (`ui.enabled`): its pages and sign-in; its API calls are the admin step's
        Dialect(),  # which front door (request head)
        Auth(gateway),  # who is calling (request head)
        Body(),  # only now: decompress (bounded), parse, request facts
        SessionHistory(gateway),  # `sessions:` a chat naming its session gets the earlier turns prepended
        Local(gateway),  # model lists and token checks for the authenticated caller
        Jobs(gateway),  # a door's background jobs (submit, status, result, cancel) and the job runner (kaixu/jobs/)
        ResponsesRecall(gateway),  # Responses API: previous_response_id's conversation, stored responses by id
        Seats(gateway),  # installs per key / customer (`seats: N`, x-kaixu-install-id): docs/keys.md#seats
        CallerRules(),  # may the caller call the model (kaixu/permission.py); `policies:` token caps, shadow mode
        RateLimits(gateway),  # rpm, tpm, requests in flight: 429 (and the X-RateLimit-* headers)
        Router(gateway),  # where it goes
        Budgets(gateway),  # reserve the most it can cost on every budget: 402
        Dispatch(gateway),  # the request leaves: retries, fallbacks, timeouts, queues (kaixu/reliability/serve.py)
        Errors(),  # JSON error pages for upstream failures
        Stream(),  # SSE pass-through meter or translator
        Settle(gateway),  # usage, translation of buffered answers, budget settled, metrics, ledger
        ResponsesKeeper(gateway),  # a Responses API answer with `store` not false is kept (in the background)
        SessionRecord(gateway),  # `sessions:` the answer names its session, whose new turns are kept
        # the stores `store:` names, chosen at each (re)load (Gateway.stores); last, so that its `done` closes
        # them after every step that reads them has stopped
        StoreChoice(gateway),
    ]


def build_addons(gateway: Gateway) -> list[object]:
    """What `kaixu run` and the `mitmdump -s` plugin both load: one addon."""
    return [Chain(build_steps(gateway))]
