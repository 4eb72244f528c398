"""The public base class for Python models served by the meshserve Python runtime."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


class Model:
    """Subclass this to serve any Python code as a model.

    The runtime creates one instance per loaded model version, calls :meth:`load`
    once, then :meth:`predict` for every request, and :meth:`unload` when the model is
    unloaded or the runtime stops. Each of the three may be a plain method or an
    ``async def``: plain ``predict`` runs in the runtime's thread pool (so it may block
    on CPU work and must be thread-safe); ``async def predict`` runs on the event loop
    and must not block.

    Declare it in the version folder's ``manifest.yaml``::

        framework: python
        entrypoint: model.py:Doubler
        inputs:  [{name: x, datatype: FP32, shape: [-1]}]
        outputs: [{name: y, datatype: FP32, shape: [-1]}]

    Attributes:
        name: the model's name.
        version: the version being served.
        path: the version folder (where artifacts live).
        parameters: the manifest's ``parameters`` mapping.
    """

    def __init__(self, name: str, version: str, path: Path, parameters: Mapping[str, Any]) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.parameters = dict(parameters)

    def load(self) -> Awaitable[None] | None:
        """Load weights or other state; raise to mark the load as failed."""
        return None

    def predict(
        self, inputs: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray] | Awaitable[dict[str, np.ndarray]]:
        """Map input arrays (by name, already checked against the manifest) to output arrays.

        Inputs may be read-only views of the request: copy before writing to them.
        Outputs are cast to the manifest's datatypes.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement predict()")

    def unload(self) -> Awaitable[None] | None:
        """Free what :meth:`load` took."""
        return None
