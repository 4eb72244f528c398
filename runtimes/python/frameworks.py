"""The Python runtime's :class:`BackendLoader`: sklearn, onnx and python frameworks."""

from __future__ import annotations

import asyncio
import importlib
import logging
from pathlib import Path
from typing import ClassVar

from meshserve.errors import InvalidArgument
from meshserve.runtime import Backend, BackendLoader, Manifest

from .loaders import load_backend

log = logging.getLogger(__name__)
FRAMEWORK_MODULES = ("sklearn", "skops.io", "onnxruntime")


def check_manifest(manifest: Manifest) -> None:
    """InvalidArgument when the fields a framework needs are missing or wrong."""
    framework = manifest.framework
    if framework in ("sklearn", "onnx") and not manifest.artifact:
        raise InvalidArgument(f"framework {framework} needs an 'artifact' file")
    if framework == "python" and (not manifest.entrypoint or ":" not in manifest.entrypoint):
        raise InvalidArgument('framework python needs an entrypoint "file.py:ClassName"')
    if framework == "sklearn":
        if len(manifest.inputs) != 1:
            raise InvalidArgument("an sklearn model takes exactly one input (its X)")
        missing = [o.name for o in manifest.outputs if o.method is None]
        if missing:
            raise InvalidArgument(
                f"sklearn outputs {missing} need a 'method' (predict, predict_proba, "
                "decision_function or transform)"
            )


def _import_frameworks() -> None:
    for module in FRAMEWORK_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:  # that framework is not installed: its models fail to load, saying so
            log.debug("framework module %s is not installed", module)


class PythonLoader(BackendLoader):
    """Loads scikit-learn (skops), ONNX and Python-class models in the runtime's own process."""

    platforms: ClassVar[dict[str, str]] = {"sklearn": "sklearn", "onnx": "onnxruntime", "python": "python"}

    def __init__(self) -> None:
        self._warming: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Importing scikit-learn and onnxruntime takes seconds; doing it now, in the
        # background, keeps that out of the first load (a catalog model's first call).
        self._warming = asyncio.create_task(asyncio.to_thread(_import_frameworks), name="import-frameworks")

    def check(self, manifest: Manifest) -> None:
        check_manifest(manifest)

    async def load(self, name: str, version: str, path: Path, manifest: Manifest) -> Backend:
        return await load_backend(name, version, path, manifest)
