"""The `kaixu` command: run the gateway, check a policy, manage keys and prices, read the ledger."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import logging.handlers
import os
import queue
import re
import secrets
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from kaixu import __version__
from kaixu.config import Policy, PolicyError, load_policy
from kaixu.config.policy import Period
from kaixu.proxy_env import CLIENTS as CLIENT_NAMES

if TYPE_CHECKING:
    from kaixu.store.queries import Filters
    from kaixu.workers import Worker

DEFAULT_POLICY = "proxy.yaml"
DEMO_POLICY = Path(__file__).resolve().parent / "demo" / "proxy.yaml"
"""The demo policy `kaixu init` writes: the repository's own proxy.yaml, shipped in the package."""


def _print_problems(error: PolicyError) -> None:
    count = len(error.problems)
    print(f"{error.source}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


def _fail(message: str) -> int:
    """Say what went wrong on stderr; the exit status of a command that failed."""
    print(message, file=sys.stderr)
    return 1


def _load_or_report(path: str) -> Policy | None:
    try:
        return load_policy(path)
    except PolicyError as exc:
        _print_problems(exc)
        return None


def _parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    try:
        return (host or "127.0.0.1", int(port))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}") from None


def cmd_check(args: argparse.Namespace) -> int:
    policy = _load_or_report(args.policy)
    if policy is None:
        return 1
    print(
        f"{args.policy}: ok (hash {policy.digest}): {len(policy.providers)} providers, "
        f"{len(policy.models) + len(policy.model_patterns)} models, {len(policy.keys)} keys"
    )
    for warning in policy.warnings:
        print(f"  warning: {warning}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """`kaixu init`: the demo policy (the mock provider, the demo key, the console on) written where kaixu run looks
    for it, so a newcomer with only the wheel has a gateway to start. Never overwrites without --force."""
    target = Path(args.policy)
    if target.exists() and not args.force:
        return _fail(f"kaixu: {target} exists already: keep it, or overwrite it with kaixu init --force")
    target.write_bytes(DEMO_POLICY.read_bytes())
    print(f"kaixu: wrote the demo policy to {target}: the mock provider (no API keys), the demo key sk-kaixu-demo,")
    print(
        "  the web console at /ui (sign in with the admin key sk-kaixu-admin-demo: replace it before you expose kaixu)"
    )
    print(
        f"  start it with: kaixu run {shlex.quote(str(target))}"
        if str(target) != DEFAULT_POLICY
        else "  start it with: kaixu run"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if not Path(args.policy).exists():
        return _fail(f"kaixu: no policy file at {args.policy}: write the demo policy there with `kaixu init`, or name "
                     "your policy file: kaixu run PATH (docs/policy.md)")  # fmt: skip
    policy = _load_or_report(args.policy)
    if policy is None:
        return _fail("kaixu: not starting until the policy is fixed")
    from kaixu import mitm

    try:
        mitm.self_test()
    except mitm.IncompatibleMitmproxy as exc:
        return _fail(f"kaixu: not starting: {exc}")
    mitm.kaixu_run_shortcuts()  # this process is kaixu's alone (why: kaixu/mitm.py)
    if args.workers is not None and args.worker_id is None:
        return _supervise(args, policy)
    worker = None
    if args.worker_id is not None:
        from kaixu.workers import Worker

        worker = Worker(args.worker_id, int(args.workers), args.run_dir)
    listener = _configure_logging(args.log_level, args.access_log, f"w{worker.id}" if worker else "")
    try:
        return asyncio.run(_run(args, policy) if worker is None else _run_worker(args, policy, worker))
    finally:
        listener.stop()


def _announce(args: argparse.Namespace, policy: Policy, addrs: Sequence[tuple[str, int]], workers: str = "") -> None:
    for host, port, *_ in addrs:
        print(f"kaixu {__version__} listening on {_url(host, port)} (policy {args.policy}, hash {policy.digest}"
              f"{workers})")  # fmt: skip
    if args.hint_key and addrs:
        print(_hint(policy, args.hint_key, *addrs[0][:2]))
    if policy.ui.enabled and addrs:
        print(_console_hint(policy, args.hint_admin_key, *addrs[0][:2]))
    sys.stdout.flush()


async def _run(args: argparse.Namespace, policy: Policy) -> int:
    from kaixu.master import build_master, serve

    master, gateway = build_master(
        args.policy,
        policy,
        listen=args.listen or None,
        port_file=args.port_file or "",
        reload_ms=args.reload_ms,
    )
    task = asyncio.create_task(serve(master, gateway))
    ps = master.addons.get("proxyserver")
    while not ps.listen_addrs() and not task.done():
        await asyncio.sleep(0.02)
    if not task.done():
        from kaixu import mitm

        bound = mitm.bound_listeners(master)
        _announce(args, policy, [(host, port) for forward, host, port in bound if not forward])
        for host, port in [(host, port) for forward, host, port in bound if forward]:
            print(f"kaixu {__version__} forward proxy on {_url(host, port)}: HTTPS_PROXY for apps that cannot set a "
                  "base URL (`kaixu env CLIENT` prints a client's lines; docs/forward-proxy.md)")  # fmt: skip
        sys.stdout.flush()
    await task
    errors = master.addons.get("errorcheck")
    return 1 if errors is not None and errors.logger.has_errored else 0


def _supervise(args: argparse.Namespace, policy: Policy) -> int:
    """`kaixu run --workers N`: this process supervises N workers (kaixu/workers.py) and serves nothing itself."""
    import signal

    from kaixu.workers import Supervisor, worker_count, write_port_file

    store = policy.store
    if store.sqlite == ":memory:" and (store.postgres is None or store.redis is None):
        return _fail("kaixu: --workers needs a store the workers share: store.sqlite must be a file (or set both "
                     "store.postgres for the ledger and store.redis for the counters); with :memory: each worker "
                     "would keep its own ledger and counters")  # fmt: skip
    if policy.forward_listen:
        return _fail("kaixu: --workers does not serve forward listeners (listen[].mode: forward) yet: run them in "
                     "one process (kaixu run without --workers)")  # fmt: skip
    try:
        count = worker_count(args.workers)
    except ValueError:
        return _fail(f"kaixu: --workers: expected a number from 1 or auto, got {args.workers!r}")
    from kaixu import ca

    ca.init(policy.ca_dir)  # once, here: N workers would each make one in the same folder at once
    listener = _configure_logging(args.log_level, args.access_log, "supervisor")
    if policy.ui.enabled and count > 1:
        logging.getLogger("kaixu").warning(
            "ui.enabled with --workers %d: console sessions live in the worker that signed in, and the kernel hands a "
            "browser's connections to any worker: the console will ask to sign in again (docs/console.md)",
            count,
        )
    try:
        worker_args = [args.policy, "--reload-ms", str(args.reload_ms), "--log-level", args.log_level]
        if args.access_log:
            worker_args.append("--access-log")
        supervisor = Supervisor(count, list(args.listen or policy.listen), worker_args)
        try:
            addrs = supervisor.reserve()
        except OSError as exc:
            return _fail(f"kaixu cannot listen on {', '.join(f'{h}:{p}' for h, p in supervisor.addresses)}: {exc}")
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, supervisor.on_signal)
        if not supervisor.start():
            return _fail("kaixu: not started: a worker could not start (its log is above)")
        if args.port_file:
            write_port_file(args.port_file, addrs)
        _announce(args, policy, addrs, f", {count} workers")
        return supervisor.watch()
    finally:
        listener.stop()


async def _run_worker(args: argparse.Namespace, policy: Policy, worker: Worker) -> int:
    """One worker of `kaixu run --workers N`: a full kaixu on its own SO_REUSEPORT listeners."""
    from kaixu import metrics
    from kaixu.master import build_master, listen_reuse_port, serve

    shared = metrics.share(worker.metrics_dir)
    master, gateway = build_master(args.policy, policy, listen=[], reload_ms=args.reload_ms, worker=worker)
    own: list[asyncio.Server] = []
    gateway.own_listeners = own  # whether this worker still accepts (the job runner claims only while it does)
    task = asyncio.create_task(serve(master, gateway, own))
    ps = master.addons.get("proxyserver")
    while not ps.is_running and not task.done():
        await asyncio.sleep(0.02)
    if task.done():
        return await _worker_exit(master, task)
    try:
        own.extend(await listen_reuse_port(list(args.listen)))
    except OSError as exc:
        logging.getLogger("kaixu").error("worker %d cannot listen: %s", worker.id, exc)
        master.shutdown()
        await task
        return 1
    with open(worker.ready_file(), "w") as fh:
        fh.write(str(os.getpid()))
    helpers = [asyncio.create_task(shared.flush_every()), asyncio.create_task(_orphaned(os.getppid()))]
    try:
        return await _worker_exit(master, task)
    finally:
        for helper in helpers:
            helper.cancel()
        shared.flush()
        shared.close()


async def _worker_exit(master: Any, task: asyncio.Task[None]) -> int:
    await task
    errors = master.addons.get("errorcheck")
    return 1 if errors is not None and errors.logger.has_errored else 0


async def _orphaned(parent: int) -> None:
    """A worker whose supervisor died (kill -9) drains and stops, as on SIGTERM."""
    import signal

    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _console_hint(policy: Policy, admin_key: str | None, host: str, port: int) -> str:
    """Where the web console is (`ui.enabled`), and with which admin key to sign in when `--hint-admin-key` names
    one of the policy's (a demo key only: it is printed)."""
    from kaixu.credentials import key_hash

    url = _url({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port) + "/ui"
    if admin_key is not None and key_hash(admin_key) in policy.admin_keys:
        return f"console: {url} (sign in with the admin key {admin_key})"
    return f"console: {url} (sign in with an admin key of the policy's admin_keys)"


def _hint(policy: Policy, key: str, host: str, port: int) -> str:
    """One curl line a new user can paste: a chat completion with `key`, on a model that key may call."""
    from kaixu.credentials import key_hash

    known = policy.keys.get(key_hash(key))
    if known is None:
        return "kaixu: no hint: --hint-key is not a key of this policy"
    models = [m for m in policy.listed_models() if known.may_use(m)]
    if not models:
        return "kaixu: no hint: the --hint-key may call none of the policy's models"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    body = json.dumps({"model": models[0], "messages": [{"role": "user", "content": "Hello"}]})
    command = [
        "curl", _url(host, port) + "/v1/chat/completions", "-H", f"Authorization: Bearer {key}",
        "-H", "content-type: application/json", "-d", body,
    ]  # fmt: skip
    return "try: " + shlex.join(command)


class ListenFailure(logging.Filter):
    """Say which address kaixu could not listen on, and why, in place of mitmproxy's wording.

    mitmproxy reports "[Errno 98] reverse proxy to http://127.0.0.1:9 failed to listen on HOST:PORT with ...":
    the upstream it names is kaixu's inert placeholder (the router picks every destination), which would send
    an operator looking at the wrong address.
    """

    PATTERN = re.compile(r"\[Errno (\d+)\] .*? failed to listen on (\S+) with ", re.S)

    def filter(self, record: logging.LogRecord) -> bool:
        match = self.PATTERN.match(record.getMessage())
        if match is not None:
            number, address = int(match[1]), match[2]
            message = f"kaixu cannot listen on {address}: {os.strerror(number).lower()}"
            if number == errno.EADDRINUSE:
                message += " (another process has it: stop that one, or pick a port with --listen HOST:PORT)"
            record.msg, record.args = message, ()
        return True


def cmd_keys_hash(args: argparse.Namespace) -> int:
    from kaixu.credentials import key_hash

    key = args.key if args.key != "-" else sys.stdin.readline().strip()
    print("sha256:" + key_hash(key))
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    from kaixu.credentials import key_hash

    key = "sk-kaixu-" + secrets.token_urlsafe(24)
    digest = key_hash(key)
    print(f"key (shown once, store it now): {key}", file=sys.stderr)
    team = f", team: {args.team}" if args.team else ""
    print(f'  - {{name: {args.name}, hash: "sha256:{digest}"{team}}}')
    return 0


# -- store keys: kaixu keys create / list / show / revoke / rotate (docs/keys.md) ---------------------------------


def _key_store(args: argparse.Namespace, policy: Policy | None = None) -> Any:
    """The policy's key store (PostgreSQL when `store.postgres` is set, else its SQLite file; `--db FILE`
    names a file instead) as an `AsyncKeyStore`; None after printing why there is none. ``policy``: the
    policy, loaded already."""
    from kaixu.config.policy import StoreConfig
    from kaixu.store.stores import key_store

    if args.db:
        return key_store(StoreConfig(), sqlite_path=str(args.db))
    policy = policy or _load_or_report(args.policy)
    if policy is None:
        print("kaixu: cannot find the key store without a valid policy (or name the file with --db FILE)",
              file=sys.stderr)  # fmt: skip
        return None
    store = key_store(policy.store)
    if store is None:
        print(f"kaixu: {args.policy} keeps no store keys (store.sqlite is :memory:)", file=sys.stderr)
    return store


def _keys_do(store: Any, method: str, *args: Any) -> Any:
    """One call of the async key store, on an event loop of its own, its connections closed after."""

    async def call() -> Any:
        try:
            return await getattr(store, method)(*args)
        finally:
            await store.close()

    return asyncio.run(call())


def _key_json(key: Any) -> dict[str, Any]:
    return dict(key.public_json())


def _pepper_or_report(doing: str) -> bytes | None:
    from kaixu.store.keys import PepperMissing, pepper

    try:
        return pepper()
    except PepperMissing as exc:
        print(f"kaixu: not {doing} a store key: {exc}. Store keys are kept as HMAC-SHA256 with this pepper; "
              "set it (at least 16 characters, e.g. `export KAIXU_KEY_PEPPER=$(openssl rand -hex 32)`) to the "
              "same value here and in the environment of `kaixu run`", file=sys.stderr)  # fmt: skip
        return None


def cmd_keys_create(args: argparse.Namespace) -> int:
    import time

    from kaixu.config.policy import usd_micros
    from kaixu.store.keys import KEY_NAME, KEY_NAME_RULE, KeyExists, StoredKey, digest, expires_at, new_secret

    if not KEY_NAME.fullmatch(args.name):
        return _fail(f"kaixu: --name: {KEY_NAME_RULE}")
    secret = _pepper_or_report("creating")
    if secret is None:
        return 1
    now = time.time()
    expires = None
    if args.expires:
        try:
            expires = expires_at(args.expires, now)
        except ValueError as exc:
            return _fail(f"kaixu: --expires: {exc}")
        if expires <= now:
            return _fail("kaixu: --expires: that is in the past")
    budget = None
    if args.budget_usd is not None:
        try:
            budget = usd_micros(args.budget_usd)
        except ValueError as exc:
            return _fail(f"kaixu: --budget-usd: {exc}")
    elif args.period is not None:
        return _fail("kaixu: --period needs --budget-usd")
    # The ledger and /api/costs/NAME know a key by its name: a policy key's is taken (read with --db too, when
    # the policy file is there).
    policy = None
    if not args.db or os.path.exists(args.policy):
        policy = _load_or_report(args.policy)
        if policy is None:
            return _fail("kaixu: no key created: the policy must be valid to check the name against its keys")
        if policy.key_named(args.name) is not None:
            taken = f"kaixu: the policy {args.policy} has a key named {args.name!r} (keys:): a store key may not "
            return _fail(taken + "take its name, or the ledger and /api/costs could not tell them apart; pick another")
    store = _key_store(args, policy)
    if store is None:
        return 1
    key = new_secret()
    stored = StoredKey(args.name, digest(secret, key), args.team, args.customer, tuple(args.models or ()), now,
                       expires, None, budget_usd_micros=budget,
                       budget_period=None if budget is None else args.period or "month", rpm=args.rpm, tpm=args.tpm,
                       max_parallel=args.max_parallel, seats=args.seats)  # fmt: skip
    try:
        _keys_do(store, "create", stored)
    except KeyExists as exc:
        return _fail(f"kaixu: {exc} (revoked keys keep their name)")
    except Exception as exc:
        return _fail(f"kaixu: cannot write {store.path}: {exc}")
    print(f"key {args.name!r} created in {store.path}; shown once, store it now:", file=sys.stderr)
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    store = _key_store(args)
    if store is None:
        return 1
    try:
        keys = _keys_do(store, "all")
    except FileNotFoundError:
        keys = []
    except Exception as exc:
        return _fail(f"kaixu: cannot read {store.path}: {exc}")
    shown = [_key_json(k) for k in keys]
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    headers = ["NAME", "TEAM", "CUSTOMER", "MODELS", "BUDGET", "LIMITS", "SEATS", "CREATED", "EXPIRES", "STATE"]
    rows = [[_name(k["name"]), _name(k["team"]), _name(k["customer"]), _name(",".join(k["models"]) or "*"),
             _budget_cell(k["budget"]), _limits_cell(k["limits"]), _n(k["seats"]), k["created"] or "-",
             k["expires"] or "never", k["state"]] for k in shown]  # fmt: skip
    print(_table(headers, rows, set()))
    return 0


def _budget_cell(budget: dict[str, Any] | None) -> str:
    return "-" if budget is None else f"${budget['usd']}/{budget['period']}"


def _limits_cell(limits: dict[str, Any]) -> str:
    shown = [f"{name}={value}" for name, value in limits.items() if value is not None]
    return ",".join(shown) or "-"


def cmd_keys_show(args: argparse.Namespace) -> int:
    store = _key_store(args)
    if store is None:
        return 1
    try:
        key = _keys_do(store, "get", args.name)
    except FileNotFoundError:
        key = None
    except Exception as exc:
        return _fail(f"kaixu: cannot read {store.path}: {exc}")
    if key is None:
        return _fail(f"kaixu: no store key named {_name(args.name)!r} in {store.path}")
    print(json.dumps(_key_json(key), indent=2))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    import time

    store = _key_store(args)
    if store is None:
        return 1
    try:
        found = _keys_do(store, "revoke", args.name, time.time())
    except Exception as exc:
        return _fail(f"kaixu: cannot write {store.path}: {exc}")
    if not found:
        return _fail(f"kaixu: no store key named {_name(args.name)!r} in {store.path}")
    print(f"key {args.name!r} revoked: a running kaixu refuses it within 2 seconds")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    import time

    from kaixu.store.keys import KeyRevoked, digest, duration_s, new_secret

    grace = duration_s(args.grace)
    if grace is None:
        return _fail("kaixu: --grace: expected a duration (0s, 45s, 90m, 1h, 7d)")
    secret = _pepper_or_report("rotating")
    if secret is None:
        return 1
    store = _key_store(args)
    if store is None:
        return 1
    key = new_secret()
    try:
        found = _keys_do(store, "rotate", args.name, digest(secret, key), time.time(), grace)
    except KeyRevoked as exc:
        return _fail(f"kaixu: {exc}")
    except Exception as exc:
        return _fail(f"kaixu: cannot write {store.path}: {exc}")
    if not found:
        return _fail(f"kaixu: no store key named {_name(args.name)!r} in {store.path}")
    print(f"key {args.name!r} rotated in {store.path}: the previous secret works for {args.grace} more; "
          "the new one, shown once, store it now:", file=sys.stderr)  # fmt: skip
    print(key)
    return 0


def _load_overrides(path: str | None) -> dict[str, object]:
    """A file holding the shape of a policy's ``pricing:`` section: ``{models: {"kind/model": {...}}}``."""
    if not path:
        return {}
    import yaml

    with open(path, encoding="utf-8") as f:
        loaded = yaml.safe_load(f) or {}
    return loaded if isinstance(loaded, dict) else {}


def cmd_prices_show(args: argparse.Namespace) -> int:
    from kaixu import pricing

    try:
        prices = pricing.table(_load_overrides(args.overrides))
    except (OSError, pricing.PricingError) as exc:
        return _fail(f"kaixu: {exc}")
    if args.provider:
        price = prices.lookup(args.provider, args.model)
        found = [(args.provider, price)] if price is not None else []
    else:
        found = prices.find(args.model)
    if not found:
        where = f" for provider kind {args.provider}" if args.provider else ""
        return _fail(f"kaixu: no price for {args.model}{where} (its cost is unknown, not 0)")
    for kind, price in found:
        origin = price.source if price.source == pricing.POLICY_OVERRIDE else f"{price.source} (as of {price.as_of})"
        print(f"{kind}/{args.model}: {price.key}, USD per 1M tokens; from {origin}")
        for name, rate in pricing.rate_fields(price.rates).items():
            print(f"  {name}: {float(rate):g}")
        for tier in price.tiers:
            print(f"  above {tier.above_input_tokens} input tokens:")
            for name, rate in pricing.rate_fields(tier.rates).items():
                print(f"    {name}: {float(rate):g}")
        if price.note:
            print(f"  note: {price.note}")
    return 0


def cmd_prices_import(args: argparse.Namespace) -> int:
    import datetime

    from kaixu.pricing import litellm

    try:
        with open(args.file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        return _fail(f"kaixu: cannot read {args.file}: {exc}")
    if not isinstance(data, dict):
        return _fail(f"kaixu: {args.file}: expected a JSON object of models")
    converted = litellm.convert(data, args.as_of or datetime.date.today().isoformat())
    text = json.dumps(converted, indent=2) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"{args.out}: {len(converted['models'])} models", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# -- the ledger: kaixu costs, kaixu logs, kaixu ledger export (docs/admin-api.md) -----------------------


def _ledger_reader(args: argparse.Namespace) -> Any:
    """The ledger's reader (`LedgerQueries`): `--db FILE`, else the policy's store (PostgreSQL when
    `store.postgres` is set, else `store.sqlite`); None after printing why there is none. Its `path` names the
    ledger in messages (never a dsn's password)."""
    from kaixu.store.queries import SqliteLedgerQueries
    from kaixu.store.stores import ledger_queries

    if args.db:
        return SqliteLedgerQueries(str(args.db))
    policy = _load_or_report(args.policy)
    if policy is None:
        print("kaixu: cannot find the ledger without a valid policy (or name the file with --db FILE)",
              file=sys.stderr)  # fmt: skip
        return None
    if policy.store.postgres is None and policy.store.sqlite == ":memory:":
        print(f"kaixu: {args.policy} keeps no ledger (store.sqlite is :memory:)", file=sys.stderr)
        return None
    return ledger_queries(policy.store)


async def _closing(queries: Any, work: Any) -> Any:
    """Awaits `work`, then lets the reader's connections go (a PostgreSQL pool)."""
    try:
        return await work
    finally:
        await queries.close()


def _filters(args: argparse.Namespace, *, dimensions: bool = True) -> Filters | None:
    """The --from/--to range and the dimension filters; None after printing what is wrong."""
    from kaixu.store.queries import Filters, parse_time

    bounds: dict[str, float | None] = {"from": None, "to": None}
    for name, text in (("from", args.since), ("to", args.until)):
        if text is not None:
            try:
                bounds[name] = parse_time(text, end=name == "to")
            except ValueError as exc:
                print(f"kaixu: --{name}: {exc}", file=sys.stderr)
                return None
    since, until = bounds["from"], bounds["to"]
    if since is not None and until is not None and since >= until:
        print("kaixu: --to must be later than --from", file=sys.stderr)
        return None
    equals = tuple((d, getattr(args, d)) for d in _FILTER_DIMENSIONS if dimensions and getattr(args, d, None))
    return Filters(since, until, equals)


_FILTER_DIMENSIONS = ("key", "team", "user", "project", "app", "client", "model", "provider", "customer")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Columns padded to their widest cell; the columns in `right` (numbers) right-aligned."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def _n(value: object) -> str:
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def _name(value: object) -> str:
    from kaixu.log import safe

    return "(none)" if value is None else safe(value, 60)


def cmd_costs(args: argparse.Namespace) -> int:
    from kaixu.pricing import usd
    from kaixu.store.queries import LedgerUnavailable, costs_json, iso

    queries = _ledger_reader(args)
    filters = _filters(args)
    if queries is None or filters is None:
        return 1
    try:
        costs = asyncio.run(_closing(queries, queries.costs(args.by, filters, limit=args.limit)))
    except LedgerUnavailable as exc:
        return _fail(f"kaixu: {exc}")
    if args.json:
        print(json.dumps(costs_json(args.by, filters, costs), indent=2))
        return 0
    headers = [args.by.upper(), "REQUESTS", "INPUT", "OUTPUT", "CACHED", "CACHE WRITE", "REASONING", "COST USD",
               "UNPRICED"]  # fmt: skip
    rows = []
    for row in [*costs.groups, costs.total]:
        cost = "-" if row.cost_micros is None else usd(row.cost_micros)
        rows.append([_name(row.group) if row is not costs.total else "total", _n(row.requests), _n(row.input_tokens),
                     _n(row.output_tokens), _n(row.cached_input_tokens), _n(row.cache_write_tokens),
                     _n(row.reasoning_tokens), cost, _n(row.unpriced_requests)])  # fmt: skip
    scope = f"from {iso(filters.since) or 'the start'} to {iso(filters.until) or 'now'}"
    shown = f"{len(costs.groups)} of {costs.group_count}" if len(costs.groups) < costs.group_count else "all"
    print(f"costs by {args.by}, {scope} ({shown} groups; ledger {queries.path})")
    print(_table(headers, rows, set(range(1, len(headers)))))
    if costs.total.unpriced_requests:
        print(f"{costs.total.unpriced_requests:,} requests used a model without a price: their cost is unknown, "
              "not in COST USD (`kaixu prices show MODEL`)")  # fmt: skip
    return 0


_LOG_HEADERS = ("TIME", "REQUEST ID", "KEY", "MODEL", "PROVIDER", "STATUS", "IN", "OUT", "COST USD", "MS")


def _log_row(record: dict[str, Any]) -> list[str]:
    from kaixu.pricing import usd
    from kaixu.store.queries import iso

    when = (iso(record.get("ts")) or "-").replace("T", " ")
    cost = record.get("cost_micros")
    latency = record.get("latency_ms")
    return [when, _name(record.get("request_id")), _name(record.get("key_name")), _name(record.get("model")),
            _name(record.get("provider")), _n(record.get("status")), _n(record.get("input_tokens")),
            _n(record.get("output_tokens")), usd(cost) if isinstance(cost, int) else "-",
            f"{latency:,.0f}" if isinstance(latency, (int, float)) else "-"]  # fmt: skip


def cmd_logs(args: argparse.Namespace) -> int:
    from kaixu.store.queries import Filters, LedgerUnavailable, record_json

    queries = _ledger_reader(args)
    if queries is None:
        return 1
    right = {5, 6, 7, 8, 9}

    def show(records: list[dict[str, Any]], header: bool) -> None:
        if args.json:
            for record in records:
                print(json.dumps(record_json(record)))
        elif records or header:
            table = _table(_LOG_HEADERS, [_log_row(r) for r in records], right).splitlines()
            print("\n".join(table if header else table[1:]))
        sys.stdout.flush()

    async def run() -> None:
        page = await queries.requests(Filters(), limit=args.n)
        records, cursors = page.records[::-1], page.cursors[::-1]
        show(records, header=True)
        cursor = cursors[-1] if cursors else None
        while args.follow:
            await asyncio.sleep(args.interval)
            newer = await queries.requests(Filters(), limit=MAX_FOLLOW_BATCH, cursor=cursor, order="asc")
            show(newer.records, header=False)
            if newer.cursors:
                cursor = newer.cursors[-1]

    try:
        asyncio.run(_closing(queries, run()))
    except LedgerUnavailable as exc:
        return _fail(f"kaixu: {exc}")
    except KeyboardInterrupt:
        return 0
    return 0


MAX_FOLLOW_BATCH = 1000


def cmd_ledger_export(args: argparse.Namespace) -> int:
    import csv
    import itertools

    from kaixu.store.queries import COLUMNS, LedgerUnavailable

    queries = _ledger_reader(args)
    filters = _filters(args, dimensions=False)
    if queries is None or filters is None:
        return 1
    records = queries.iter_records(filters) if hasattr(queries, "iter_records") else _each(queries, filters)
    try:
        first = list(itertools.islice(records, 1))  # an unreadable ledger is reported before any output
    except LedgerUnavailable as exc:
        return _fail(f"kaixu: {exc}")
    out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout  # noqa: SIM115
    count = 0
    try:
        writer = csv.writer(out) if args.format == "csv" else None
        if writer is not None:
            writer.writerow(COLUMNS)
        for record in itertools.chain(first, records):
            if writer is not None:
                writer.writerow(["" if record[c] is None else record[c] for c in COLUMNS])
            else:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    except LedgerUnavailable as exc:
        return _fail(f"kaixu: the export stopped after {count:,} records: {exc}")
    finally:
        if out is not sys.stdout:
            out.close()
    if args.output:
        print(f"{args.output}: {count:,} records", file=sys.stderr)
    return 0


def _each(queries: Any, filters: Any) -> Iterator[dict[str, Any]]:
    """A PostgreSQL ledger's records, oldest first, as the blocking iterator the export writes from: each page
    read on an event loop of the export's own (bounded memory, as with SQLite)."""
    loop = asyncio.new_event_loop()
    records = queries.records(filters)
    try:
        while True:
            try:
                yield loop.run_until_complete(records.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(records.aclose())
        loop.run_until_complete(queries.close())
        loop.close()


def _bounded(low: float, high: float, kind: type = int) -> Any:
    """An argparse type: a number of `kind` from `low` to `high`."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a number from {low:g} to {high:g}, got {text!r}")
        return value

    return parse


def _usd_amount(text: str) -> float:
    """An argparse type: a positive USD amount (made exact micro-dollars by `usd_micros` when used)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1e12:
        raise argparse.ArgumentTypeError(f"expected a positive amount of USD, got {text!r}")
    return value


def _ledger_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("policy", nargs="?", default=DEFAULT_POLICY, help="policy file whose store.sqlite is read "
                        "(default: proxy.yaml)")  # fmt: skip
    parser.add_argument("--db", metavar="FILE", help="read this ledger file instead of the policy's")


def _time_range(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="since", metavar="TIME",
                        help="from this time on: unix seconds or ISO 8601 (2026-01-01, 2026-01-01T09:30Z; UTC "
                        "when no offset is given)")  # fmt: skip
    parser.add_argument("--to", dest="until", metavar="TIME", help="before this time (a date: to the end of that day)")


def _configure_logging(level: str, access_log: bool, process: str = "") -> logging.handlers.QueueListener:
    """Log records are queued by the event loop and written to stderr by a thread: a slow terminal or
    pipe never stalls the proxy. `process`: which process of `kaixu run --workers N` writes (`w1`,
    `supervisor`), in every line."""
    where = f"[{process}] " if process else ""
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, stderr)
    handler = logging.handlers.QueueHandler(records)
    handler.addFilter(ListenFailure())
    logger = logging.getLogger("kaixu")
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    logging.getLogger("kaixu.access").setLevel(logging.INFO if access_log else logging.WARNING)
    # mitmproxy's own problems (a port in use, a TLS failure) at warning and above; its per-connection
    # chatter stays quiet.
    proxy_logger = logging.getLogger("mitmproxy")
    proxy_logger.addHandler(handler)
    proxy_logger.setLevel(logging.WARNING)
    listener.start()
    return listener


# -- seats: kaixu seats list / revoke (docs/keys.md#seats) ----------------------------------------------------


async def _with_seat_store(args: argparse.Namespace, work: Any) -> Any:
    """Runs `work(store, where)` on the policy's seat store: PostgreSQL when the policy has `store.postgres`
    (through the pool of `kaixu/store/postgres.py`, sized for one command), else its SQLite file (or
    `--db FILE`). None after printing why there is no store."""
    from kaixu.store import postgres
    from kaixu.store.seats import PostgresSeatStore, SqliteSeatStore

    if args.db:
        return await work(SqliteSeatStore(str(args.db)), str(args.db))
    policy = _load_or_report(args.policy)
    if policy is None:
        return None
    pg = policy.store.postgres
    if pg is not None:
        pool = await postgres.open_pool(pg.dsn, 1)
        try:
            return await work(PostgresSeatStore(pool), "PostgreSQL (store.postgres)")
        finally:
            await postgres.close_pool(pool)
    path = policy.store.sqlite
    if path == ":memory:":
        print(f"kaixu: {args.policy} keeps no seats (store.sqlite is :memory:)", file=sys.stderr)
        return None
    return await work(SqliteSeatStore(path), path)


def _seats_scope(args: argparse.Namespace) -> str | None:
    from kaixu.store.seats import customer_scope, key_scope

    if args.key is not None:
        return key_scope(args.key)
    return None if args.customer is None else customer_scope(args.customer)


def cmd_seats_list(args: argparse.Namespace) -> int:
    from kaixu.store.seats import seat_json

    async def read(store: Any, where: str) -> list[Any]:
        return list(await store.seats(_seats_scope(args)))

    try:
        seats = asyncio.run(_with_seat_store(args, read))
    except Exception as exc:
        return _fail(f"kaixu: cannot read the seats: {exc}")
    if seats is None:
        return 1
    shown = [seat_json(s) for s in seats]
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    rows = [[_name(s["scope"]), _name(s["install_id"]), s["first_seen"] or "-", s["last_seen"] or "-", s["state"]]
            for s in shown]  # fmt: skip
    print(_table(["SCOPE", "INSTALL_ID", "FIRST_SEEN", "LAST_SEEN", "STATE"], rows, set()))
    return 0


def cmd_seats_revoke(args: argparse.Namespace) -> int:
    import time

    from kaixu.store.seats import INSTALL_ID, INSTALL_ID_RULE

    if not INSTALL_ID.fullmatch(args.install_id):
        return _fail(f"kaixu: INSTALL_ID: {INSTALL_ID_RULE}")
    scope = _seats_scope(args)
    assert scope is not None  # argparse: --key or --customer is required

    async def revoke(store: Any, where: str) -> tuple[bool, str]:
        return bool(await store.revoke(scope, args.install_id, time.time())), where

    try:
        done = asyncio.run(_with_seat_store(args, revoke))
    except Exception as exc:
        return _fail(f"kaixu: cannot revoke the seat: {exc}")
    if done is None:
        return 1
    seen, where = done
    note = "" if seen else " (never seen before: it is refused from its first request)"
    print(f"install {args.install_id} revoked for {_name(scope)} in {where}{note}: a running kaixu refuses it "
          "within 2 seconds, and its seat is free")  # fmt: skip
    return 0


def _seats_parser(sub: Any) -> None:
    seats = sub.add_parser("seats", help="installs (x-kaixu-install-id) of keys and customers with seats: N")
    commands = seats.add_subparsers(dest="seats_command", required=True)
    seat_list = commands.add_parser("list", help="installs with a seat: first and last seen, state")
    who = seat_list.add_mutually_exclusive_group()
    who.add_argument("--key", metavar="NAME", help="only this key's installs")
    who.add_argument("--customer", metavar="NAME", help="only this end customer's installs")
    seat_list.add_argument("--json", action="store_true")
    _ledger_source(seat_list)
    seat_list.set_defaults(func=cmd_seats_list)
    revoke = commands.add_parser("revoke", help="revoke an install (frees its seat; refused within 2 s)")
    who = revoke.add_mutually_exclusive_group(required=True)
    who.add_argument("--key", metavar="NAME")
    who.add_argument("--customer", metavar="NAME")
    revoke.add_argument("install_id", metavar="INSTALL_ID")
    _ledger_source(revoke)
    revoke.set_defaults(func=cmd_seats_revoke)


def _ca_folder(args: argparse.Namespace) -> str | None:
    policy = _load_or_report(args.policy)
    return None if policy is None else policy.ca_dir


def cmd_ca(args: argparse.Namespace) -> int:
    """`kaixu ca init|export|rotate`: the forward listeners' CA, in the store's folder (docs/forward-proxy.md)."""
    from kaixu import ca

    folder = _ca_folder(args)
    if folder is None:
        return 1
    try:
        if args.ca_command == "export":
            pem = ca.export(folder, with_roots=args.with_roots)
            if args.out:
                Path(args.out).write_bytes(pem)
            else:
                sys.stdout.write(pem.decode())
            return 0
        if args.ca_command == "rotate":
            cert, what = ca.rotate(folder), "new CA"
        else:
            cert, made = ca.init(folder)
            what = "made the CA" if made else "the CA exists"
    except ca.NoCA as exc:
        return _fail(f"kaixu: {exc}")
    print(f"kaixu: {what} {ca.fingerprint(cert)}: {ca.cert_path(folder)} (trust this certificate; the key stays "
          f"in {folder})")  # fmt: skip
    if args.ca_command == "rotate":
        print("kaixu: restart kaixu to sign with it, and have every client trust the new certificate")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    """`kaixu env CLIENT`: the lines to paste to send a client through the policy's forward listener."""
    from kaixu import ca
    from kaixu.proxy_env import proxy_url, render

    policy = _load_or_report(args.policy)
    if policy is None:
        return 1
    if args.proxy is not None:
        host, port = args.proxy
    elif policy.forward_listen:
        host, port = policy.forward_listen[0]
    else:
        return _fail("kaixu: the policy has no forward listener (listen: [{port: 8080, mode: forward}]); "
                     "or say where it is with --proxy HOST:PORT")  # fmt: skip
    if port == 0:
        return _fail("kaixu: the forward listener's port is 0 (picked at start): give it with --proxy HOST:PORT")
    ca.init(policy.ca_dir)
    bundle = ca.bundle_path(policy.ca_dir)
    if not bundle.is_file():
        ca.write_bundle(policy.ca_dir)
    proxy = proxy_url(host, port, args.key)
    print(render(args.client, proxy=proxy, ca=str(ca.cert_path(policy.ca_dir)), bundle=str(bundle), key=args.key))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaixu", description="An AI gateway built from mitmproxy addons.")
    parser.add_argument("--version", action="version", version=f"kaixu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway on a policy file")
    run.add_argument("policy", nargs="?", default=DEFAULT_POLICY, help="policy file (default: proxy.yaml)")
    run.add_argument(
        "--listen",
        action="append",
        type=_parse_listen,
        metavar="HOST:PORT",
        help="listen here instead of the policy's listen: (repeatable; port 0 picks a free port)",
    )
    run.add_argument("--port-file", help="write the bound addresses as JSON to this file once listening")
    run.add_argument("--reload-ms", type=int, default=1000, help="policy file check interval, 0 = no hot reload")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--access-log", action="store_true", help="log one line per request (id, status, model, tokens)")
    run.add_argument(
        "--hint-key",
        metavar="KEY",
        help="once listening, print a curl line to try, with this key (it is printed: a demo key only)",
    )
    run.add_argument(
        "--hint-admin-key",
        metavar="KEY",
        help="with the console on, print this admin key beside its address (it is printed: a demo key only)",
    )
    run.add_argument("--workers", metavar="N|auto", help="serve from N worker processes on the same port(s) "
                     "(auto: one per core); docs/operations.md#workers")  # fmt: skip
    run.add_argument("--worker-id", type=int, help=argparse.SUPPRESS)  # set by the supervisor for its workers
    run.add_argument("--run-dir", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_run)

    init = sub.add_parser("init", help="write the demo policy (mock provider, demo key, console on) to proxy.yaml")
    init.add_argument("policy", nargs="?", default=DEFAULT_POLICY, help="where to write it (default: proxy.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite the file when it exists")
    init.set_defaults(func=cmd_init)
    authority = sub.add_parser("ca", help="the forward listeners' CA (kept in the store's folder)")
    ca_commands = authority.add_subparsers(dest="ca_command", required=True)
    for name, what in (
        ("init", "make the CA if there is none; print its fingerprint and certificate file"),
        ("export", "print the CA certificate (never its key), for clients to trust"),
        ("rotate", "replace the CA with a new one (restart kaixu; clients must trust the new certificate)"),
    ):
        command = ca_commands.add_parser(name, help=what)
        command.add_argument("policy", nargs="?", default=DEFAULT_POLICY, help="policy file (default: proxy.yaml)")
        if name == "export":
            command.add_argument("--with-roots", action="store_true", help="after certifi's roots: a bundle for "
                                 "SSL_CERT_FILE / REQUESTS_CA_BUNDLE, which replace a runtime's roots")  # fmt: skip
            command.add_argument("--out", metavar="FILE", help="write it here instead of stdout")
        command.set_defaults(func=cmd_ca)
    env = sub.add_parser("env", help="the lines to paste to send a client through the forward listener")
    env.add_argument("client", choices=sorted(CLIENT_NAMES))
    env.add_argument("policy", nargs="?", default=DEFAULT_POLICY, help="policy file (default: proxy.yaml)")
    env.add_argument("--key", default="sk-kaixu-YOUR-KEY", help="the kaixu key the client's calls are billed to")
    env.add_argument("--proxy", type=_parse_listen, metavar="HOST:PORT", help="the forward listener (default: the "
                     "policy's first)")  # fmt: skip
    env.set_defaults(func=cmd_env)

    check = sub.add_parser("check", help="validate a policy file and print every problem with its line")
    check.add_argument("policy", nargs="?", default=DEFAULT_POLICY)
    check.set_defaults(func=cmd_check)

    keys = sub.add_parser("keys", help="virtual keys").add_subparsers(dest="keys_command", required=True)
    key_hash = keys.add_parser("hash", help="print the sha256 of a key, for the policy's keys: list")
    key_hash.add_argument("key", help="the key, or - to read it from stdin")
    key_hash.set_defaults(func=cmd_keys_hash)
    key_new = keys.add_parser("new", help="make a new random key; prints the policy line to add")
    key_new.add_argument("--name", required=True)
    key_new.add_argument("--team")
    key_new.set_defaults(func=cmd_keys_new)
    create = keys.add_parser("create", help="make a key kept in the policy's store (needs KAIXU_KEY_PEPPER); "
                             "prints it once")  # fmt: skip
    create.add_argument("--name", required=True)
    create.add_argument("--team")
    create.add_argument("--customer", help="the end customer the key's requests are counted against")
    create.add_argument("--models", nargs="+", metavar="GLOB", help="the models it may call (default: all)")
    create.add_argument("--expires", metavar="30d|DATE", help="a duration (30d, 12h, 90m, 45s) or a date")
    create.add_argument("--budget-usd", metavar="USD", type=_usd_amount, help="the key's spend cap in USD "
                        "(at most 6 decimals) per --period")  # fmt: skip
    create.add_argument("--period", choices=get_args(Period), help="the budget's window (default: month)")
    for limit, what in (
        ("rpm", "requests per minute"),
        ("tpm", "tokens per minute"),
        ("max-parallel", "requests in flight at once"),
        ("seats", "installs it may be used from"),
    ):
        create.add_argument(f"--{limit}", metavar="N", type=_bounded(1, 2**62), help=what)  # fmt: skip
    _ledger_source(create)
    create.set_defaults(func=cmd_keys_create)
    key_list = keys.add_parser("list", help="the store's keys: names, team, dates, state (never secrets)")
    _ledger_source(key_list)
    key_list.add_argument("--json", action="store_true")
    key_list.set_defaults(func=cmd_keys_list)
    for name, func, what in (
        ("show", cmd_keys_show, "print one store key (never its secret)"),
        ("revoke", cmd_keys_revoke, "revoke a store key (a running kaixu refuses it within 2 s)"),
    ):
        command = keys.add_parser(name, help=what)
        command.add_argument("name")
        _ledger_source(command)
        command.set_defaults(func=func)
    rotate = keys.add_parser("rotate", help="give a store key a new secret (printed once); the old one works "
                             "for a grace period")  # fmt: skip
    rotate.add_argument("name")
    rotate.add_argument("--grace", default="1h", metavar="1h", help="how long the old secret keeps working "
                        "(0s, 45s, 90m, 1h, 7d; default 1h)")  # fmt: skip
    _ledger_source(rotate)
    rotate.set_defaults(func=cmd_keys_rotate)

    prices = sub.add_parser("prices", help="model prices").add_subparsers(dest="prices_command", required=True)
    show = prices.add_parser("show", help="print the price that applies to a model, and where it came from")
    show.add_argument("model")
    show.add_argument("--provider", metavar="KIND", help="provider kind (openai, anthropic, gemini, mock)")
    show.add_argument("--overrides", metavar="FILE", help="YAML/JSON file with {models: {kind/model: prices}}")
    show.set_defaults(func=cmd_prices_show)
    imp = prices.add_parser("import", help="convert LiteLLM's model_prices_and_context_window.json to kaixu's format")
    imp.add_argument("file")
    imp.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    imp.add_argument("--as-of", metavar="DATE", help="the as_of date to record (default: today)")
    imp.set_defaults(func=cmd_prices_import)

    costs = sub.add_parser("costs", help="what requests cost, grouped by key, team, user, project, app, client, "
                           "model, provider or customer")  # fmt: skip
    _ledger_source(costs)
    costs.add_argument("--by", default="key", choices=_FILTER_DIMENSIONS, help="group by (default: key)")
    _time_range(costs)
    for dimension in _FILTER_DIMENSIONS:
        costs.add_argument(f"--{dimension}", metavar="NAME", help=f"only the requests of this {dimension}")
    costs.add_argument(
        "--limit", type=_bounded(1, 1000), default=1000, help="at most this many groups, most expensive first"
    )
    costs.add_argument("--json", action="store_true", help="print the JSON of GET /api/costs")
    costs.set_defaults(func=cmd_costs)

    logs = sub.add_parser("logs", help="the newest ledger records; --follow prints new ones as they arrive")
    _ledger_source(logs)
    logs.add_argument("-n", type=_bounded(1, 1000), default=20, help="how many records, 1-1000 (default: 20)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new records (Ctrl-C stops)")
    logs.add_argument(
        "--interval", type=_bounded(0.05, 3600, float), default=1.0, help="seconds between polls with --follow"
    )
    logs.add_argument("--json", action="store_true", help="one JSON record per line (as GET /api/requests)")
    logs.set_defaults(func=cmd_logs)

    ledger = sub.add_parser("ledger", help="the request ledger").add_subparsers(dest="ledger_command", required=True)
    export = ledger.add_parser("export", help="every ledger record (oldest first) as CSV or JSON lines")
    _ledger_source(export)
    export.add_argument("--format", required=True, choices=["csv", "jsonl"])
    _time_range(export)
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    export.set_defaults(func=cmd_ledger_export)
    _seats_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
