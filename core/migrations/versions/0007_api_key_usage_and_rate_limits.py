"""api keys: name, last use, rate-limit window

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("name", sa.String(), server_default="", nullable=False))
    op.add_column("api_keys", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "api_keys", sa.Column("rate_window_start", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "api_keys", sa.Column("rate_window_count", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "api_keys",
        sa.Column("rate_previous_count", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    for column in ("rate_previous_count", "rate_window_count", "rate_window_start", "last_used_at", "name"):
        op.drop_column("api_keys", column)
