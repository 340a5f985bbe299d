"""kaixu: an AI gateway built from mitmproxy addons, driven by one YAML policy."""

__version__ = "0.1.0"
