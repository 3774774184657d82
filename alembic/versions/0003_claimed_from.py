"""job.claimed_from: the state a running attempt was claimed from, where it returns.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

A step may claim from several states (an eval step takes ``new`` and ``compiled``); an
interrupted or retried attempt must go back to the one it came from.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("job", sa.Column("claimed_from", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("job", "claimed_from")
