"""The results store: analysis jobs and their calls, anomalies and manifests, in SQLite or
PostgreSQL through SQLAlchemy 2, with Alembic migrations. ARCHITECTURE.md section 2."""

from __future__ import annotations

from analyzer.storage.engine import DatabaseError, StoreError, database_url
from analyzer.storage.jobs import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ATTEMPTS,
    InputSpec,
    JobView,
    Lease,
    LeaseLost,
    Recovery,
)
from analyzer.storage.models import FINAL_STATES, JobOrigin, JobState
from analyzer.storage.queries import (
    CallCounts,
    CallFilter,
    CallOrder,
    CallPage,
    InvalidCursor,
    SignerCount,
    StoredCall,
)
from analyzer.storage.store import Store
from analyzer.storage.writer import Heartbeat, RunWriter

__all__ = [
    "DEFAULT_LEASE_S",
    "DEFAULT_MAX_ATTEMPTS",
    "FINAL_STATES",
    "CallCounts",
    "CallFilter",
    "CallOrder",
    "CallPage",
    "DatabaseError",
    "Heartbeat",
    "InputSpec",
    "InvalidCursor",
    "JobOrigin",
    "JobState",
    "JobView",
    "Lease",
    "LeaseLost",
    "Recovery",
    "RunWriter",
    "SignerCount",
    "Store",
    "StoreError",
    "StoredCall",
    "database_url",
]
