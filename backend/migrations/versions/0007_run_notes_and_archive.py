"""runs.notes (free text) and runs.archived (hidden from listings by default)

Revision ID: 0007
Revises: 0006
Create Date: 2027-01-12

Runs management (issue #20): rename, notes, tags, archive and delete. Existing runs are not archived.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("notes", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("archived", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index("ix_runs_archived", ["archived"])


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_archived")
        batch_op.drop_column("archived")
        batch_op.drop_column("notes")
