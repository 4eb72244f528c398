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


def runtime_key(runtime_id: str) -> bytes:
    return (RUNTIMES + runtime_id).encode()


def placement_key(model: str, version: str, runtime_id: str) -> bytes:
    return f"{PLACEMENTS}{model}/{version}/{runtime_id}".encode()


def _text(key: bytes) -> str:
    return key.decode(errors="replace")


def parse_placement_key(key: bytes) -> tuple[str, str, str] | None:
    """Return (model, version, runtime id) of a placement key, or None for other keys."""
    text = _text(key)
    if not text.startswith(PLACEMENTS):
        return None
    parts = text[len(PLACEMENTS):].split("/")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


def parse_runtime_key(key: bytes) -> str | None:
    text = _text(key)
    return text[len(RUNTIMES):] if text.startswith(RUNTIMES) else None


def audit_policy_key(model: str) -> bytes:
    return (AUDIT_POLICIES + model).encode()


def parse_audit_policy_key(key: bytes) -> str | None:
    text = _text(key)
    return text[len(AUDIT_POLICIES):] if text.startswith(AUDIT_POLICIES) else None


def route_key(model: str) -> bytes:
    return (ROUTES + model).encode()


def parse_route_key(key: bytes) -> str | None:
    text = _text(key)
    return text[len(ROUTES):] if text.startswith(ROUTES) else None


def pipeline_key(name: str) -> bytes:
    return (PIPELINES + name).encode()


def parse_pipeline_key(key: bytes) -> str | None:
    text = _text(key)
    return text[len(PIPELINES):] if text.startswith(PIPELINES) else None


def api_key_key(key_id: str) -> bytes:
    return (API_KEYS + key_id).encode()


def parse_api_key_key(key: bytes) -> str | None:
    text = _text(key)
    return text[len(API_KEYS):] if text.startswith(API_KEYS) else None


def access_rule_key(rule_id: str) -> bytes:
    return (ACCESS_RULES + rule_id).encode()


def parse_access_rule_key(key: bytes) -> str | None:
    text = _text(key)
    return text[len(ACCESS_RULES):] if text.startswith(ACCESS_RULES) else None
