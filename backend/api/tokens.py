"""API tokens (admin scope): create, list, revoke; and `whoami` for any caller."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from backend.api.deps import CanAdmin, SessionDep
from backend.api.params import SqlInt
from backend.security import authenticate
from backend.services import tokens as service
from repscope.schemas import TokenCreate, TokenCreated, TokenRead, WhoAmI

router = APIRouter(tags=["tokens"])


@router.get("/tokens", response_model=list[TokenRead], dependencies=[CanAdmin])
def list_tokens(session: SessionDep) -> list[TokenRead]:
    """Every token: name, scopes, created, last used (never the secret: only its hash is stored)."""
    return [TokenRead.model_validate(t) for t in service.list_tokens(session)]


@router.post("/tokens", response_model=TokenCreated, status_code=201, dependencies=[CanAdmin],
             responses={409: {"description": "A token with that name exists"}})
def create_token(body: TokenCreate, session: SessionDep) -> TokenCreated:
    """A new token; the response holds its secret, the only time it is shown."""
    try:
        token, secret = service.create_token(session, body.name, body.scopes)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return TokenCreated.model_validate({**TokenRead.model_validate(token).model_dump(), "token": secret})


@router.delete("/tokens/{token_id}", status_code=204, dependencies=[CanAdmin])
def revoke_token(token_id: SqlInt, session: SessionDep) -> Response:
    """Revoke a token: its bearer requests and browser sessions stop working at once."""
    service.revoke(session, service.get_token(session, token_id))
    return Response(status_code=204)


@router.get("/whoami", response_model=WhoAmI, responses={401: {"description": "A malformed, unknown or revoked "
                                                                                "token (none at all is anonymous)"}})
def whoami(request: Request, session: SessionDep) -> WhoAmI:
    """Who the credentials sent with this request belong to, and their scopes (anonymous without any)."""
    p = authenticate(request, session)
    return WhoAmI(name=p.name, scopes=sorted(p.scopes), via=p.via)
