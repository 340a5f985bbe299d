"""The `kaixu` command: run the gateway, check a policy, manage keys."""

from __future__ import annotations

import argparse
import asyncio
import errno
import hashlib
import json
import logging
import logging.handlers
import os
import queue
import re
import secrets
import shlex
import sys
from collections.abc import Sequence

from kaixu import __version__
from kaixu.config import Policy, PolicyError, load_policy

DEFAULT_POLICY = "proxy.yaml"


def _print_problems(error: PolicyError) -> None:
    count = len(error.problems)
    print(f"{error.source}: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


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


def cmd_run(args: argparse.Namespace) -> int:
    policy = _load_or_report(args.policy)
    if policy is None:
        print("kaixu: not starting until the policy is fixed", file=sys.stderr)
        return 1
    from kaixu import mitm

    try:
        mitm.self_test()
    except mitm.IncompatibleMitmproxy as exc:
        print(f"kaixu: not starting: {exc}", file=sys.stderr)
        return 1
    listener = _configure_logging(args.log_level, args.access_log)
    try:
        return asyncio.run(_run(args, policy))
    finally:
        listener.stop()


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
        addrs = ps.listen_addrs()
        for host, port, *_ in addrs:
            print(f"kaixu {__version__} listening on {_url(host, port)} (policy {args.policy}, hash {policy.digest})")
        if args.hint_key and addrs:
            print(_hint(policy, args.hint_key, *addrs[0][:2]))
        sys.stdout.flush()
    await task
    errors = master.addons.get("errorcheck")
    return 1 if errors is not None and errors.logger.has_errored else 0


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _hint(policy: Policy, key: str, host: str, port: int) -> str:
    """One curl line a new user can paste: a chat completion with `key`, on a model that key may call."""
    from kaixu.addons.auth import key_hash

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
    key = args.key if args.key != "-" else sys.stdin.readline().strip()
    print("sha256:" + hashlib.sha256(key.encode()).hexdigest())
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    key = "sk-kaixu-" + secrets.token_urlsafe(24)
    digest = hashlib.sha256(key.encode()).hexdigest()
    print(f"key (shown once, store it now): {key}", file=sys.stderr)
    team = f", team: {args.team}" if args.team else ""
    print(f'  - {{name: {args.name}, hash: "sha256:{digest}"{team}}}')
    return 0


def _load_overrides(path: str | None) -> dict[str, object]:
    """A file holding the shape of a policy's future ``pricing:`` section: ``{models: {"kind/model": {...}}}``."""
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
        print(f"kaixu: {exc}", file=sys.stderr)
        return 1
    if args.provider:
        price = prices.lookup(args.provider, args.model)
        found = [(args.provider, price)] if price is not None else []
    else:
        found = prices.find(args.model)
    if not found:
        where = f" for provider kind {args.provider}" if args.provider else ""
        print(f"kaixu: no price for {args.model}{where} (its cost is unknown, not 0)", file=sys.stderr)
        return 1
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
        print(f"kaixu: cannot read {args.file}: {exc}", file=sys.stderr)
        return 1
    if not isinstance(data, dict):
        print(f"kaixu: {args.file}: expected a JSON object of models", file=sys.stderr)
        return 1
    converted = litellm.convert(data, args.as_of or datetime.date.today().isoformat())
    text = json.dumps(converted, indent=2) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"{args.out}: {len(converted['models'])} models", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _configure_logging(level: str, access_log: bool) -> logging.handlers.QueueListener:
    """Log records are queued by the event loop and written to stderr by a thread: a slow terminal or
    pipe never stalls the proxy."""
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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
    run.set_defaults(func=cmd_run)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
