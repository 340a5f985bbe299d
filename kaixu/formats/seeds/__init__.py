"""Front doors for the client APIs of existing gateways ("seeds"), served wire-compatibly.

Each module is a front-door-only codec (see ``base.Codec``): it decodes the seed's
request into the canonical model and encodes kaixu's answer back in the seed's
shape. The provider half raises ``NotImplementedError``: nothing routes *to* them.

* ``kaixu_gate`` (seed 001): kAIxu Gate ``/v1/generate``, ``/v1/stream``, ``/v1/health``, ``/v1/models``.
* ``gateway13`` (seed 000): Kaixu Gateway 13 ``gateway-chat`` / ``gateway-stream``.
* ``pulse`` (seed 003): Pulse AI Gateway ``/api/ai/request``.

Facts only the gateway knows (cost, caps, install id, the client's ``includeRaw``)
come in through ``SeedContext`` (``context.py``).
"""

from __future__ import annotations

from . import gateway13, kaixu_gate, pulse
from .context import MonthRollup, SeedCodec, SeedContext, month_key

__all__ = [
    "SEED_CODECS",
    "MonthRollup",
    "SeedCodec",
    "SeedContext",
    "gateway13",
    "kaixu_gate",
    "month_key",
    "pulse",
]

#: Front-door name -> codec, for the gateway's door table.
SEED_CODECS: dict[str, SeedCodec] = {
    kaixu_gate.NAME: kaixu_gate.CODEC,
    gateway13.NAME: gateway13.CODEC,
    pulse.NAME: pulse.CODEC,
}
