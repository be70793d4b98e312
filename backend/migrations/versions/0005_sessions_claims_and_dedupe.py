"""browser sessions, claim ids, idempotency owners, global idempotency keys and the artifact dedupe constraint

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

Evaluations running at upgrade time have no claim hash: their workers' writes are refused (409) and the
sweeper hands them on when the lease expires. Artifacts stored before this revision keep a NULL dedupe key
(NULLs never collide in a unique constraint, on SQLite and PostgreSQL alike). An Idempotency-Key becomes unique
across runs: where older rows share one, the first keeps it and the later ones lose theirs (a retry of those
answers 409, as a key reused on another run now does).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "browser_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("csrf_secret", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["token_id"], ["api_tokens.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256"),
    )
    with op.batch_alter_table("browser_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_browser_sessions_token_id"), ["token_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_browser_sessions_expires_at"), ["expires_at"], unique=False)

    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_hash", sa.String(length=64), nullable=True))

    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_token_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("idempotency_fingerprint", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("dedupe_key", sa.String(length=64), nullable=True))
        batch_op.create_foreign_key(
            "fk_artifacts_idempotency_token_id",
            "api_tokens",
            ["idempotency_token_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_unique_constraint("uq_artifact_dedupe", ["run_id", "dedupe_key"])
        batch_op.drop_constraint("uq_artifact_idempotency", type_="unique")
    op.execute("UPDATE artifacts SET idempotency_key = NULL WHERE idempotency_key IS NOT NULL AND id NOT IN "
               "(SELECT MIN(id) FROM artifacts WHERE idempotency_key IS NOT NULL GROUP BY idempotency_key)")
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_artifact_idempotency_key", ["idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_constraint("uq_artifact_idempotency_key", type_="unique")
        batch_op.create_unique_constraint("uq_artifact_idempotency", ["run_id", "idempotency_key"])
        batch_op.drop_constraint("uq_artifact_dedupe", type_="unique")
        batch_op.drop_constraint("fk_artifacts_idempotency_token_id", type_="foreignkey")
        batch_op.drop_column("dedupe_key")
        batch_op.drop_column("idempotency_fingerprint")
        batch_op.drop_column("idempotency_token_id")

    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_column("claim_hash")

    with op.batch_alter_table("browser_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_browser_sessions_expires_at"))
        batch_op.drop_index(batch_op.f("ix_browser_sessions_token_id"))
    op.drop_table("browser_sessions")
