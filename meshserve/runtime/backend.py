"""What a runtime plugs into the common machinery: its backends and the loader making them."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from meshserve.tracing import OFF, Tracing

from .manifest import Manifest

Arrays = dict[str, np.ndarray]


class Backend:
    """A loaded model version.

    ``predict`` is synchronous and runs in the runtime's thread pool; a backend with
    ``is_async`` set has ``apredict`` awaited on the event loop instead (one that hands
    work to other processes, say). Inputs are already checked against the manifest;
    outputs are cast to its datatypes afterwards.

    ``allow_nan`` and ``allow_inf`` say whether the framework takes NaN and infinite
    values in float inputs: where it does not, the runtime refuses them with
    INVALID_ARGUMENT before ``predict`` (an input's ``allow_nan``/``allow_inf`` in the
    manifest decide instead, when set).
    """

    platform = ""
    is_async = False
    allow_nan = True
    allow_inf = True

    def predict(self, inputs: Arrays, wanted: Sequence[str]) -> Arrays:
        raise NotImplementedError

    async def apredict(self, inputs: Arrays, wanted: Sequence[str]) -> Arrays:
        raise NotImplementedError

    async def close(self) -> None:
        """Free what the backend holds (the version is unloaded or the runtime stops)."""
        return None


class BackendLoader(abc.ABC):
    """The part of a runtime that is its own: the frameworks it serves and how it loads them.

    Subclasses set :attr:`platforms` and implement :meth:`load`; :meth:`check`,
    :meth:`start` and :meth:`close` are optional.
    """

    #: framework -> the platform reported in model metadata and the registry.
    platforms: ClassVar[Mapping[str, str]] = {}
    #: the runtime's tracing, given by the :class:`~meshserve.runtime.RuntimeServer` running
    #: this loader before it starts: backends that trace work of their own record it there.
    tracing: Tracing = OFF

    def check(self, manifest: Manifest) -> None:
        """Raise :class:`meshserve.errors.InvalidArgument` when framework-specific fields are wrong.

        Called when a version is found and before each load; ``manifest.framework`` is
        already known to be one of :attr:`platforms`.
        """
        return None

    @abc.abstractmethod
    async def load(self, name: str, version: str, path: Path, manifest: Manifest) -> Backend:
        """Load version ``version`` of model ``name`` from its folder ``path``.

        Raise a :class:`meshserve.errors.MeshError` with a message a person can act on;
        any other exception also marks the version FAILED, with its type and message.
        """

    async def start(self) -> None:
        """Called once before the first load (start a worker pool, say)."""
        return None

    async def close(self) -> None:
        """Called once when the runtime stops, after every version is unloaded."""
        return None
