"""The JWT settings of every service that authenticates callers (the router, the audit service)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

from meshserve.auth.jwt import JwtVerifier, KeySetError, load_keys

log = logging.getLogger(__name__)


class JwtSettings(BaseSettings):
    """Accept ``Bearer <JWT>`` from one issuer beside API keys; off while ``jwt_keys`` is unset."""

    jwt_keys: Path | None = Field(
        None, description="the JWT issuer's public keys (a JWKS JSON file or a PEM public key); "
        "set, the service also accepts 'Bearer <JWT>' (needs --jwt-issuer and --jwt-audience)"
    )
    jwt_issuer: str = Field("", description="the issuer (iss claim) a JWT must name")
    jwt_audience: str = Field("", description="the audience (aud claim) a JWT must include: this mesh's name there")
    jwt_principal_claim: str = Field("sub", description="the JWT claim naming the principal that rules match")
    jwt_roles_claim: str = Field(
        "roles", description="the JWT claim listing the principal's roles (a list, or a space-separated string)"
    )

    @model_validator(mode="after")
    def _jwt_complete(self) -> Self:
        if self.jwt_keys is None:
            if self.jwt_issuer or self.jwt_audience:
                raise ValueError("--jwt-issuer and --jwt-audience take effect only with --jwt-keys: "
                                 "give the issuer's public keys (a JWKS or PEM file)")
            return self
        if not self.jwt_issuer or not self.jwt_audience:
            raise ValueError("--jwt-keys needs --jwt-issuer and --jwt-audience: the service checks every JWT's "
                             "issuer and audience")
        try:
            load_keys(self.jwt_keys)
        except KeySetError as e:
            raise ValueError(f"--jwt-keys: {e}") from None
        return self


def verifier_from_settings(settings: JwtSettings) -> JwtVerifier | None:
    """The verifier the settings ask for (None when ``jwt_keys`` is unset); logs which issuer it accepts."""
    if settings.jwt_keys is None:
        return None
    verifier = JwtVerifier.from_file(settings.jwt_keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                                     principal_claim=settings.jwt_principal_claim,
                                     roles_claim=settings.jwt_roles_claim)
    log.info("accepting JWT bearer tokens from issuer %r for audience %r (%d keys from %s; principal claim %r, "
             "roles claim %r)", verifier.issuer, verifier.audience, len(verifier.keys), settings.jwt_keys,
             verifier.principal_claim, verifier.roles_claim)
    return verifier
