"""Key layout of the registry in etcd (all keys are UTF-8 bytes)."""

from __future__ import annotations

ROOT = "/meshserve/v1/"
RUNTIMES = ROOT + "runtimes/"
PLACEMENTS = ROOT + "placements/"
AUDIT_POLICIES = ROOT + "audit-policies/"
ROUTES = ROOT + "routes/"
PIPELINES = ROOT + "pipelines/"
API_KEYS = ROOT + "keys/"
ACCESS_RULES = ROOT + "access/"
RATE_LIMITS = ROOT + "rate-limits/"
MODEL_LIMITS = ROOT + "model-limits/"
CATALOG = ROOT + "catalog/"
PLACING = ROOT + "placing/"
ROUTERS = ROOT + "routers/"


def runtime_key(runtime_id: str) -> bytes:
    return (RUNTIMES + runtime_id).encode()


def placement_key(model: str, version: str, runtime_id: str) -> bytes:
    """Under the runtime's own prefix, so etcd can let each runtime write its placements only."""
    return f"{PLACEMENTS}{runtime_id}/{model}/{version}".encode()


def _text(key: bytes) -> str:
    return key.decode(errors="replace")


def _after(prefix: str, key: bytes) -> str | None:
    """The name a key holds under ``prefix``, or None for keys of other kinds."""
    text = _text(key)
    return text[len(prefix):] if text.startswith(prefix) else None


def parse_placement_key(key: bytes) -> tuple[str, str, str] | None:
    """Return (model, version, runtime id) of a placement key, or None for other keys."""
    text = _text(key)
    if not text.startswith(PLACEMENTS):
        return None
    parts = text[len(PLACEMENTS):].split("/")
    return (parts[1], parts[2], parts[0]) if len(parts) == 3 else None


def parse_runtime_key(key: bytes) -> str | None:
    return _after(RUNTIMES, key)


def audit_policy_key(model: str) -> bytes:
    return (AUDIT_POLICIES + model).encode()


def parse_audit_policy_key(key: bytes) -> str | None:
    return _after(AUDIT_POLICIES, key)


def route_key(model: str) -> bytes:
    return (ROUTES + model).encode()


def parse_route_key(key: bytes) -> str | None:
    return _after(ROUTES, key)


def pipeline_key(name: str) -> bytes:
    return (PIPELINES + name).encode()


def parse_pipeline_key(key: bytes) -> str | None:
    return _after(PIPELINES, key)


def api_key_key(key_id: str) -> bytes:
    return (API_KEYS + key_id).encode()


def parse_api_key_key(key: bytes) -> str | None:
    return _after(API_KEYS, key)


def access_rule_key(rule_id: str) -> bytes:
    return (ACCESS_RULES + rule_id).encode()


def parse_access_rule_key(key: bytes) -> str | None:
    return _after(ACCESS_RULES, key)


def rate_limit_key(principal: str) -> bytes:
    return (RATE_LIMITS + principal).encode()


def parse_rate_limit_key(key: bytes) -> str | None:
    return _after(RATE_LIMITS, key)


def model_limits_key(model: str) -> bytes:
    return (MODEL_LIMITS + model).encode()


def parse_model_limits_key(key: bytes) -> str | None:
    return _after(MODEL_LIMITS, key)


def catalog_key(model: str) -> bytes:
    return (CATALOG + model).encode()


def parse_catalog_key(key: bytes) -> str | None:
    return _after(CATALOG, key)


def placing_key(model: str, version: str) -> bytes:
    """The claim a router holds (under a lease) while it places a model version."""
    return f"{PLACING}{model}/{version}".encode()


def router_key(router_id: str) -> bytes:
    """A live router's record (under its lease): the routers count each other to share rate limits."""
    return (ROUTERS + router_id).encode()


def parse_router_key(key: bytes) -> str | None:
    return _after(ROUTERS, key)
