"""State that outlives a request: the request ledger (SQLite by default; PostgreSQL and Redis for several
replicas arrive with the shared-state issue)."""

from kaixu.store.ledger import Ledger, LedgerRecord
from kaixu.store.sqlite import SqliteLedgerStore

__all__ = ["Ledger", "LedgerRecord", "SqliteLedgerStore"]
