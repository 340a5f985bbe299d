"""kaixu as a plain mitmproxy plugin:

    mitmdump -s kaixu/plugin.py --set kaixu_policy=proxy.yaml \\
        --mode reverse:http://127.0.0.1:9@127.0.0.1:4000 --set connection_strategy=lazy

The same addons as `kaixu run`, on mitmdump's own Master (with its default addon set, so slower).
"""

from kaixu.addons import build_addons
from kaixu.gateway import Gateway

addons = build_addons(Gateway())
