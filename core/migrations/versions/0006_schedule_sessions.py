"""schedules can post into a session

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "schedules",
        sa.Column("session_id", sa.String(), sa.ForeignKey("sessions.id"), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("schedules", "session_id")
