"""State that outlives a request: the request ledger and the store keys, in SQLite (one machine) or
PostgreSQL (`store.postgres`, several replicas: kaixu/store/postgres.py)."""

from kaixu.store.ledger import Ledger, LedgerRecord, LedgerStore, StoreUnavailable, escape_text, escaped
from kaixu.store.sqlite import SqliteLedgerStore

__all__ = ["Ledger", "LedgerRecord", "LedgerStore", "SqliteLedgerStore", "StoreUnavailable", "escape_text", "escaped"]
