"""The JWT settings of every service that authenticates callers (the router, the audit service)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

from meshserve.auth.jwt import JwtVerifier
from meshserve.auth.keysets import (
    DEFAULT_MIN_REFRESH_S,
    DEFAULT_REFRESH_S,
    FileKeys,
    KeySet,
    KeySetError,
    KeySource,
    UrlKeys,
    check_jwks_url,
    load_keys,
)

log = logging.getLogger(__name__)


class JwtSettings(BaseSettings):
    """Accept ``Bearer <JWT>`` from one issuer beside API keys; off unless ``jwt_keys`` or ``jwt_jwks_url`` is set."""

    jwt_keys: Path | None = Field(
        None, description="the JWT issuer's public keys (a JWKS JSON file or a PEM public key), read again when the "
        "file changes; set, the service also accepts 'Bearer <JWT>' (needs --jwt-issuer and --jwt-audience)"
    )
    jwt_jwks_url: str = Field(
        "", description="the JWT issuer's JWKS URL (its jwks_uri; https://, or http:// on loopback), fetched at "
        "start-up and again in the background; instead of --jwt-keys"
    )
    jwt_issuer: str = Field("", description="the issuer (iss claim) a JWT must name")
    jwt_audience: str = Field("", description="the audience (aud claim) a JWT must include: this mesh's name there")
    jwt_principal_claim: str = Field("sub", description="the JWT claim naming the principal that rules match")
    jwt_roles_claim: str = Field(
        "roles", description="the JWT claim listing the principal's roles (a list, or a space-separated string)"
    )
    jwt_refresh_s: float = Field(
        DEFAULT_REFRESH_S, gt=0, description="how often the JWT key set is refreshed: the file read again if it "
        "changed, the URL fetched (a key removed there is refused from then on)"
    )
    jwt_refresh_min_s: float = Field(
        DEFAULT_MIN_REFRESH_S, ge=0, description="the shortest time between two refreshes of the JWT key set caused "
        "by tokens naming a key id it does not hold, so made-up key ids cannot make the service hammer the issuer"
    )

    @model_validator(mode="after")
    def _jwt_complete(self) -> Self:
        if self.jwt_keys is None and not self.jwt_jwks_url:
            if self.jwt_issuer or self.jwt_audience:
                raise ValueError("--jwt-issuer and --jwt-audience take effect only with --jwt-keys or --jwt-jwks-url: "
                                 "give the issuer's public keys (a JWKS or PEM file, or its JWKS URL)")
            return self
        flag = "--jwt-keys" if self.jwt_keys is not None else "--jwt-jwks-url"
        if self.jwt_keys is not None and self.jwt_jwks_url:
            raise ValueError("give either --jwt-keys or --jwt-jwks-url, not both")
        if not self.jwt_issuer or not self.jwt_audience:
            raise ValueError(f"{flag} needs --jwt-issuer and --jwt-audience: the service checks every JWT's "
                             "issuer and audience")
        if self.jwt_keys is not None:
            try:
                load_keys(self.jwt_keys)
            except KeySetError as e:
                raise ValueError(f"--jwt-keys: {e}") from None
        else:
            check_jwks_url(self.jwt_jwks_url)
        return self


def verifier_from_settings(settings: JwtSettings) -> JwtVerifier | None:
    """The verifier the settings ask for (None when JWTs are off); logs which issuer it accepts.

    A key file must hold a usable key now (KeySetError otherwise); a URL that cannot be
    fetched at start-up is logged and fetched again every ``jwt_refresh_min_s``, while
    API keys work and JWTs are refused.
    """
    source: KeySource
    if settings.jwt_keys is not None:
        source = FileKeys(settings.jwt_keys)
    elif settings.jwt_jwks_url:
        source = UrlKeys(settings.jwt_jwks_url)
    else:
        return None
    key_set = KeySet(source, refresh_s=settings.jwt_refresh_s, min_refresh_s=settings.jwt_refresh_min_s)
    key_set.load(required=settings.jwt_keys is not None)
    verifier = JwtVerifier(key_set, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                           principal_claim=settings.jwt_principal_claim, roles_claim=settings.jwt_roles_claim)
    log.info("accepting JWT bearer tokens from issuer %r for audience %r (%d keys from %s, refreshed every %g s; "
             "principal claim %r, roles claim %r)", verifier.issuer, verifier.audience, len(verifier.keys),
             source.where, settings.jwt_refresh_s, verifier.principal_claim, verifier.roles_claim)
    return verifier
