"""kaixu as a plain mitmproxy plugin:

    mitmdump -s kaixu/plugin.py --set kaixu_policy=proxy.yaml \\
        --mode reverse:http://127.0.0.1:9@127.0.0.1:4000 --set connection_strategy=lazy \\
        --set termlog_verbosity=warn

The same addons as `kaixu run`, on mitmdump's own Master. kaixu's connections (its reverse listeners) meet only
the addons `kaixu run` has, plus mitmproxy's `block` and your scripts (`kaixu/mitm.py` `PluginAddonManager`):
mitmdump's other default addons never see kaixu's flows, so mitmdump prints no line per kaixu request and its
map/modify/save options leave them alone. Every other listener of the same mitmdump (`--mode regular@8080`...)
keeps every default addon, as without kaixu.

Options: `connection_strategy=lazy` (kaixu picks the upstream per request; mitmdump would otherwise connect to
the inert target of `--mode` first). `termlog_verbosity=warn` keeps kaixu's warnings and errors and drops
mitmproxy's info lines, two per client connection (`client connect`, `client disconnect`); `kaixu run` logs at
warning too. kaixu's flows are never printed by mitmdump's dumper, so `flow_detail` and `-q` change nothing for
them (`-q` also hides kaixu's warnings). docs/performance.md#plugin-path has what the plugin path costs.
"""

from kaixu import mitm
from kaixu.addons import build_addons
from kaixu.gateway import Gateway

addons = [mitm.PluginDispatch(), *build_addons(Gateway())]
