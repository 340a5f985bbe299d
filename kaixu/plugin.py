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
the inert target of `--mode` first). `termlog_verbosity=warn` keeps kaixu's warnings and errors and drops the
info lines: kaixu's access line per request and mitmproxy's two per client connection (`client connect`, `client
disconnect`); kaixu's loggers take that level (`kaixu.log.TermlogLevel`), so a line that would not be printed
is not made either (`kaixu run` logs at warning, without access lines, by default too). kaixu's flows are never
printed by mitmdump's dumper, so `flow_detail` changes nothing for them. docs/performance.md#plugin-path has
what the plugin path costs.
"""

from kaixu import mitm
from kaixu.addons import build_addons
from kaixu.gateway import Gateway
from kaixu.log import TermlogLevel

addons = [mitm.PluginDispatch(), TermlogLevel(), *build_addons(Gateway())]
