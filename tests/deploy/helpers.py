"""Checking the meshserve commands and settings that deployment files pass, against the real settings classes."""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic_settings import BaseSettings

from meshserve import tls
from meshserve.cli.context import CONTEXT_ENV
from meshserve.runtimes.python.settings import PythonRuntimeSettings
from meshserve.runtimes.r.settings import RRuntimeSettings
from meshserve.runtimes.triton.settings import TritonRegistrarSettings
from meshserve.services.audit.settings import AuditSettings
from meshserve.services.router.settings import RouterSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"

# `python -m MODULE` -> the settings class whose fields are that service's flags.
SERVICES: dict[str, type[BaseSettings]] = {
    "meshserve.services.router": RouterSettings,
    "meshserve.services.audit": AuditSettings,
    "meshserve.runtimes.python": PythonRuntimeSettings,
    "meshserve.runtimes.r": RRuntimeSettings,
    "meshserve.runtimes.triton": TritonRegistrarSettings,
}


@functools.cache
def cli_env_vars() -> frozenset[str]:
    """Environment variables the `meshserve` command line reads (its typer options, the services' addresses,
    the context file and TLS files)."""
    names = {tls.ENV_PREFIX + part for part in ("CA", "CERT", "KEY")} | {"MESHSERVE_API_KEY", CONTEXT_ENV}
    for path in (ROOT / "meshserve" / "cli").glob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r'envvar="(MESHSERVE_[A-Z_]+)"', text))
        names |= set(re.findall(r'Service\("\w+", "--[\w-]+", "(MESHSERVE_[A-Z_]+)"', text))
    return frozenset(names)


def load_script(path: Path) -> ModuleType:
    """Import a script that is not in a package (deploy/healthcheck.py, deploy/kubernetes/make_tls.py)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def meshserve_module(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """(module, its arguments) when ``argv`` is `python -m meshserve.X ...`, else None."""
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1] == "-m" and argv[2] in SERVICES:
        return argv[2], list(argv[3:])
    return None


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion, with a stand-in for variables only the cluster knows."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), f"x-{m.group(1).lower()}"), value)


def flags(args: Sequence[str], settings: type[BaseSettings]) -> Iterator[tuple[str, str | None]]:
    """(field name, value) for each `--flag[=value]` in ``args``; None for a bare boolean flag."""
    fields = settings.model_fields
    i = 0
    while i < len(args):
        arg = args[i]
        assert arg.startswith("--"), f"{arg!r} is not a --flag (services take no positional arguments)"
        name, eq, value = arg[2:].partition("=")
        field = name.replace("-", "_")
        if field.startswith("no_") and field[3:] in fields and fields[field[3:]].annotation is bool:
            yield field[3:], "false"
        elif eq:
            yield field, value
        elif field in fields and fields[field].annotation is bool:
            yield field, None
        else:
            i += 1
            yield field, args[i] if i < len(args) else None
        i += 1


def check_service(module: str, args: Sequence[str], env: Mapping[str, str], where: str) -> list[str]:
    """Problems with one meshserve command: unknown flags or variables, or values its settings refuse."""
    settings = SERVICES[module]
    fields = settings.model_fields
    prefix = str(settings.model_config.get("env_prefix", ""))
    problems = []
    values: dict[str, Any] = {}
    for name, value in env.items():
        if name.startswith(prefix):
            field = name[len(prefix):].lower()
            if field not in fields:
                problems.append(f"{where}: {name} is not a setting of {module} ({settings.__name__})")
            else:
                values[field] = _expand(value, env)
        elif name.startswith("MESHSERVE_") and name not in cli_env_vars():
            problems.append(f"{where}: {name} is neither a {prefix}* setting nor a variable of the meshserve command")
    for field, flag_value in flags(args, settings):
        if field not in fields:
            problems.append(f"{where}: --{field.replace('_', '-')} is not a flag of {module} "
                            f"(flags: {', '.join('--' + f.replace('_', '-') for f in fields)})")
        else:
            values[field] = True if flag_value is None else _expand(flag_value, env)
    if not problems:
        try:
            settings(**values)
        except ValueError as e:  # pydantic's ValidationError
            problems.append(f"{where}: {module} refuses these settings: {e}")
    return problems
