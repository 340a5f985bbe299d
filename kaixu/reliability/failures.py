"""The one classifier of upstream failures: what a provider that failed means, whoever saw it fail.

Three parts of kaixu see a provider fail: mitmproxy's own forwarding of a first attempt (its error hook: the
reliability entry, kaixu/reliability/serve.py, and the error page, kaixu/addons/errors.py), the attempt
executor's HTTP client (kaixu/reliability/executor.py), and the stream relay (kaixu/reliability/relay.py).
Each asks here, so a failure has one wording, one status and one code, and counts against a deployment by one
rule:

- no answer at all (`UpstreamFailure`): a timeout is a 504, a refused or dropped connection a 502, each
  counted in `kaixu_upstream_errors_total` by kind;
- an answer that counts against the deployment that gave it (`deployment_failed`: 429 and 5xx, its breaker);
- a provider's 401 is about kaixu's own key, not the client's: hidden behind a 502 (`hides_provider_answer`).

Which failures are retried and which fall back is the plan's business (kaixu/reliability/plan.py `verdict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kaixu.exceptions import KaixuError
from kaixu.metrics import UPSTREAM_ERRORS
from kaixu.reliability.upstream import ConnectError

FailureKind = Literal["timeout", "connect", "protocol"]


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """A provider that gave no answer (or kaixu's refusal to send it one), as every client is told."""

    status: int
    message: str
    type: str
    code: str

    @classmethod
    def of_error(cls, error: KaixuError) -> UpstreamFailure:
        """kaixu's own refusal of an attempt (a full provider queue): the answer the exception means."""
        return cls(error.status, str(error), error.type, error.code)


def upstream_failure(kind: FailureKind, provider: str, detail: str, seconds: float = 0.0) -> UpstreamFailure:
    """The one wording of an unreachable, broken or silent provider, counted in `kaixu_upstream_errors_total`."""
    UPSTREAM_ERRORS.labels(provider, kind).inc()
    if kind == "timeout":
        return UpstreamFailure(504, f"provider {provider!r} did not answer within {seconds:g} s{detail}",
                               "timeout_error", "upstream_timeout")  # fmt: skip
    if kind == "connect":
        return UpstreamFailure(502, f"provider {provider!r} is unreachable ({detail})", "api_error",
                               "upstream_connect_error")  # fmt: skip
    return UpstreamFailure(502, f"provider {provider!r} closed the connection without a complete response ({detail})",
                           "api_error", "upstream_protocol_error")  # fmt: skip


def transport_failure(exc: BaseException, provider: str, seconds: float, what: str) -> UpstreamFailure:
    """An attempt of kaixu's own HTTP client that got no answer: its timeout (`what` timed out after
    ``seconds``), or a connection that was refused (`ConnectError`) or broke (anything else)."""
    if isinstance(exc, TimeoutError):
        return upstream_failure("timeout", provider, f" ({what})", seconds)
    kind: FailureKind = "connect" if isinstance(exc, ConnectError) else "protocol"
    return upstream_failure(kind, provider, str(exc) or type(exc).__name__)


def native_failure(exc: BaseException, provider: str, seconds: float, what: str) -> UpstreamFailure:
    """An attempt of kaixu's own HTTP client made in mitmproxy's stead (`Executor.forward`) that got no answer,
    worded as mitmproxy's own forwarding failing (`forwarding_failure`), which the client would have got."""
    timed_out = seconds if isinstance(exc, TimeoutError) else None
    return forwarding_failure(provider, timed_out, not isinstance(exc, ConnectError), str(exc) or type(exc).__name__)


def forwarding_failure(provider: str, timed_out_after: float | None, connected: bool, detail: str) -> UpstreamFailure:
    """mitmproxy's own forwarding of a first attempt that got no whole answer: kaixu's timer closed it
    (``timed_out_after`` seconds), it never connected, or the connection broke before a whole answer."""
    if timed_out_after is not None:
        return upstream_failure("timeout", provider, "", timed_out_after)
    return upstream_failure("protocol" if connected else "connect", provider, detail)


def deployment_failed(status: int) -> bool:
    """An answer that counts against the deployment that gave it (its breaker, kaixu/reliability/health.py): it
    throttled (429) or failed (5xx). A client's 4xx is the client's doing, not the deployment's."""
    return status == 429 or status >= 500


def hides_provider_answer(status: int, byok: bool) -> bool:
    """A provider's 401 is about the key kaixu sent, not the client's, and its text may quote part of that key
    (OpenAI's does): the client gets a 502 naming the provider instead of the provider's words."""
    return status == 401 and not byok


def credentials_rejected(provider: str) -> UpstreamFailure:
    """What a hidden provider 401 (`hides_provider_answer`) becomes for the client."""
    message = f"provider {provider!r} rejected the API key configured for it (HTTP 401)"
    return UpstreamFailure(502, message, "api_error", "provider_auth_failed")
