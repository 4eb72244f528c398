"""What every runtime serving a model repository shares.

A runtime is a settings class (a :class:`ModelRuntimeSettings` subclass), a kind
(``"python"``, ``"r"`` ...) and a :class:`BackendLoader`; :class:`RuntimeServer` does the
rest: model repository, OIP servicer, signature checks, registration and mesh link.
See ``docs/runtimes.md``.
"""

from .backend import Arrays, Backend, BackendLoader
from .manifest import Manifest, RSection, TensorSpec, load_manifest
from .server import RuntimeServer, main, serve
from .settings import ModelRuntimeSettings

__all__ = [
    "Arrays", "Backend", "BackendLoader", "Manifest", "ModelRuntimeSettings", "RSection", "RuntimeServer",
    "TensorSpec", "load_manifest", "main", "serve",
]
