"""evaluations.queued_at: when the evaluation last joined its queue (upload, retry, or put back by the sweeper)

Revision ID: 0006
Revises: 0005
Create Date: 2027-01-10

Queue positions (issue #20) count the queued evaluations ahead in this order: a retried evaluation goes to the
back of its queue although its id is old. `enqueued_at` is no substitute: the sweeper renews it on every re-send of
a message the broker may still hold. Existing rows take their creation time.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE evaluations SET queued_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_column("queued_at")
