"""/api/v1/whoami: the role and tenant of the presented key, so that a page shows each
caller what it may do (the dashboard offers resume and cancel to operators only)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.deps import PrincipalDep
from app.api.responses import errors
from app.auth import Role, get_keyring

router = APIRouter(tags=["access"])


class Whoami(BaseModel):
    success: bool = True
    role: Role
    tenant: str = Field(description="A client key's tenant; an operator sees every tenant.")
    keys_required: bool = Field(
        description="False when no API keys are configured: the gateway is open and "
        "every caller acts as an operator."
    )


@router.get("/whoami", response_model=Whoami, responses=errors(401))
async def whoami(principal: PrincipalDep) -> Whoami:
    return Whoami(
        role=principal.role, tenant=principal.tenant, keys_required=not get_keyring().is_open
    )
