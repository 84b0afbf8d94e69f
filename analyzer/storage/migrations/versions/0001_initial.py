"""Initial schema: jobs, job inputs, calls, PASSporTs, anomalies, manifests.

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Written out in full (not imported from ``analyzer.storage.models``) so that this revision keeps
creating the same tables whatever the models become later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# JSON text documents (key order kept); timestamptz on PostgreSQL, naive UTC on SQLite;
# 64-bit keys that stay SQLite's ROWID alias (models.Document, UTCDateTime, BigKey).
DOCUMENT = sa.JSON()
BIG_KEY = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("options", DOCUMENT, nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("started_at", _when(), nullable=True),
        sa.Column("finished_at", _when(), nullable=True),
        sa.Column("progress_calls", sa.BigInteger(), nullable=False),
        sa.Column("progress_bytes", sa.BigInteger(), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(255), nullable=True),
        sa.Column("lease_token", sa.String(32), nullable=True),
        sa.Column("lease_expires_at", _when(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("summary", DOCUMENT, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_created", "jobs", ["created_at"])
    op.create_index("ix_jobs_state_created", "jobs", ["state", "created_at"])
    op.create_index("ix_jobs_state_lease", "jobs", ["state", "lease_expires_at"])

    op.create_table(
        "job_inputs",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(1024), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("location", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_job_inputs_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "position", name="pk_job_inputs"),
    )
    op.create_index("ix_job_inputs_sha256", "job_inputs", ["sha256"])

    op.create_table(
        "calls",
        sa.Column("id", BIG_KEY, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("call_id", sa.String(512), nullable=False),
        sa.Column("start_ns", sa.BigInteger(), nullable=False),
        sa.Column("start", _when(), nullable=False),
        sa.Column("src", sa.String(64), nullable=False),
        sa.Column("dst", sa.String(64), nullable=False),
        sa.Column("transport", sa.String(16), nullable=False),
        sa.Column("encapsulation", sa.String(16), nullable=True),
        sa.Column("calling_tn", sa.String(64), nullable=True),
        sa.Column("called_tn", sa.String(64), nullable=True),
        sa.Column("verstat", sa.String(64), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("attest", sa.String(8), nullable=True),
        sa.Column("origid", sa.String(64), nullable=True),
        sa.Column("signer_spc", sa.String(64), nullable=True),
        sa.Column("signer_org", sa.String(256), nullable=True),
        sa.Column("x5u", sa.String(2048), nullable=True),
        sa.Column("final_status", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(64), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("passport_count", sa.Integer(), nullable=False),
        sa.Column("anomaly_count", sa.Integer(), nullable=False),
        sa.Column("replay", sa.Boolean(), nullable=False),
        sa.Column("record", DOCUMENT, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_calls_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_calls"),
    )
    op.create_index("uq_calls_job_seq", "calls", ["job_id", "seq"], unique=True)
    op.create_index("ix_calls_job_start", "calls", ["job_id", "start_ns", "id"])
    op.create_index("ix_calls_start", "calls", ["start_ns", "id"])
    op.create_index("ix_calls_verstat", "calls", ["verstat", "start_ns"])
    op.create_index("ix_calls_attest", "calls", ["attest", "start_ns"])
    op.create_index("ix_calls_signer_spc", "calls", ["signer_spc", "start_ns"])
    op.create_index("ix_calls_calling_tn", "calls", ["calling_tn", "start_ns"])
    op.create_index("ix_calls_called_tn", "calls", ["called_tn", "start_ns"])
    op.create_index("ix_calls_call_id", "calls", ["call_id"])

    op.create_table(
        "passports",
        sa.Column("id", BIG_KEY, autoincrement=True, nullable=False),
        sa.Column("call_pk", BIG_KEY, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("ppt", sa.String(64), nullable=True),
        sa.Column("attest", sa.String(8), nullable=True),
        sa.Column("origid", sa.String(64), nullable=True),
        sa.Column("orig_tn", sa.String(64), nullable=True),
        sa.Column("iat", sa.BigInteger(), nullable=True),
        sa.Column("x5u", sa.String(2048), nullable=True),
        sa.Column("signer_spc", sa.String(64), nullable=True),
        sa.Column("valid", sa.Boolean(), nullable=True),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("signature_sha256", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["call_pk"], ["calls.id"], name="fk_passports_call_pk_calls", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_passports_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_passports"),
    )
    op.create_index("ix_passports_call", "passports", ["call_pk", "position"])
    op.create_index("ix_passports_job", "passports", ["job_id"])
    op.create_index("ix_passports_origid", "passports", ["origid"])
    op.create_index("ix_passports_signature", "passports", ["signature_sha256"])
    op.create_index("ix_passports_signer_spc", "passports", ["signer_spc"])

    op.create_table(
        "anomalies",
        sa.Column("id", BIG_KEY, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("call_pk", BIG_KEY, nullable=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("frame", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("document", DOCUMENT, nullable=False),
        sa.ForeignKeyConstraint(
            ["call_pk"], ["calls.id"], name="fk_anomalies_call_pk_calls", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_anomalies_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_anomalies"),
    )
    op.create_index("ix_anomalies_call", "anomalies", ["call_pk"])
    op.create_index("ix_anomalies_job_kind", "anomalies", ["job_id", "kind"])

    op.create_table(
        "manifests",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("document", DOCUMENT, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_manifests_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name="pk_manifests"),
    )


def downgrade() -> None:
    for table in ("manifests", "anomalies", "passports", "calls", "job_inputs", "jobs"):
        op.drop_table(table)
