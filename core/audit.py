"""The audit trail: who changed which of their resources, how, and when."""

from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from schemas.tables import AuditLog


def audit(
    session: AsyncSession,
    user_id: str,
    action: str,
    resource_type: str,
    resource_id: str,
    **details: Any,
) -> None:
    """Add an audit row to `session`: it is kept only if the change it records commits."""
    session.add(
        AuditLog(
            user_id=user_id,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            details=details,
        )
    )
