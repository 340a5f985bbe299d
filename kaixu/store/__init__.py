"""State that outlives a request: the request ledger (SQLite by default; PostgreSQL and Redis for several
replicas arrive with the shared-state issue)."""

from kaixu.store.ledger import Ledger, LedgerRecord, LedgerStore, StoreUnavailable, escape_text, escaped
from kaixu.store.sqlite import SqliteLedgerStore

__all__ = ["Ledger", "LedgerRecord", "LedgerStore", "SqliteLedgerStore", "StoreUnavailable", "escape_text", "escaped"]
