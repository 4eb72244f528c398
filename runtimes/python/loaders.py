"""Turning a manifest and its artifact into something that predicts.

Each loader returns a :class:`meshserve.runtime.Backend`. ``predict`` is synchronous
and runs in the runtime's thread pool; a backend with ``is_async`` set is awaited on the
event loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import pickle
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meshserve.errors import FailedPrecondition, InvalidArgument
from meshserve.runtime import Arrays, Backend, Manifest

from .model import Model

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
# scikit-learn's words when its input validation refuses values (check_array's NaN and infinity checks).
SKLEARN_REFUSED_VALUES = ("contains NaN", "contains infinity", "value too large for dtype")


def _takes_nan(estimator: Any) -> bool:
    """Whether the estimator takes NaN (as a missing value), by its scikit-learn tags."""
    try:
        from sklearn.utils import get_tags

        return bool(get_tags(estimator).input_tags.allow_nan)
    except Exception:  # noqa: BLE001 - older scikit-learn, or not an estimator: let it check its input itself
        return True


class SklearnBackend(Backend):
    """A scikit-learn estimator: NaN only where its tags say it takes them, infinity never.

    Values scikit-learn's own checks refuse (a float32 that overflows in a scaler, say)
    are INVALID_ARGUMENT with its words, never an internal error.
    """

    platform = "sklearn"
    allow_inf = False

    def __init__(self, estimator: Any, manifest: Manifest) -> None:
        self.allow_nan = _takes_nan(estimator)
        self.input = manifest.inputs[0].name
        self.methods: dict[str, Callable[[Any], Any]] = {}
        for out in manifest.outputs:
            assert out.method is not None
            method = getattr(estimator, out.method, None)
            if method is None:
                raise InvalidArgument(
                    f"output {out.name!r} wants {type(estimator).__name__}.{out.method}(), "
                    "which this estimator does not have"
                )
            self.methods[out.name] = method

    def predict(self, inputs: Arrays, wanted: Sequence[str]) -> Arrays:
        x = inputs[self.input]
        results: dict[Callable[[Any], Any], Any] = {}
        out: Arrays = {}
        for name in wanted:
            method = self.methods[name]
            if method not in results:
                results[method] = self._call(method, x, name)
            out[name] = results[method]
        return out

    @staticmethod
    def _call(method: Callable[[Any], Any], x: Any, output: str) -> Any:
        """``method(x)``; values the estimator cannot take are InvalidArgument, whether it says so or not."""
        try:
            result = method(x)
        except ValueError as e:
            text = str(e)
            if not any(words in text for words in SKLEARN_REFUSED_VALUES):
                raise
            hint = "send finite values small enough for the model's arithmetic to stay finite" \
                if "too large" in text else "replace NaN and infinite values before calling"
            raise InvalidArgument(f"scikit-learn cannot take these values: {text.splitlines()[0]} ({hint})") from e
        # Finite inputs that give NaN or infinity overflowed on the way (3e38 through a float32
        # scaler, say) and scikit-learn did not notice: a wrong answer, refused as the input's.
        if isinstance(result, np.ndarray) and result.dtype.kind == "f" and not np.isfinite(result).all() \
                and isinstance(x, np.ndarray) and x.dtype.kind == "f" and np.isfinite(x).all():
            raise InvalidArgument(
                f"scikit-learn's {output!r} for these values holds NaN or infinity: they overflow the model's "
                "arithmetic (send finite values small enough for it to stay finite)")
        return result


class OnnxBackend(Backend):
    platform = "onnxruntime"

    def __init__(self, session: Any, manifest: Manifest) -> None:
        self.session = session
        self.feeds = [(i.name, i.onnx_name or i.name) for i in manifest.inputs]
        self.fetch = {o.name: o.onnx_name or o.name for o in manifest.outputs}

    def predict(self, inputs: Arrays, wanted: Sequence[str]) -> Arrays:
        names = [self.fetch[w] for w in wanted]
        results = self.session.run(names, {graph: inputs[name] for name, graph in self.feeds})
        return dict(zip(wanted, results, strict=True))


class PythonBackend(Backend):
    platform = "python"

    def __init__(self, model: Model) -> None:
        self.model = model
        self.is_async = inspect.iscoroutinefunction(model.predict)

    def predict(self, inputs: Arrays, wanted: Sequence[str]) -> Arrays:
        result = self.model.predict(inputs)
        assert isinstance(result, dict)
        return result

    async def apredict(self, inputs: Arrays, wanted: Sequence[str]) -> Arrays:
        result = self.model.predict(inputs)
        assert inspect.isawaitable(result)
        return await result

    async def close(self) -> None:
        await _maybe_await(self.model.unload())


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if inspect.isawaitable(value):
        await value


def load_sklearn(path: Path, manifest: Manifest) -> SklearnBackend:
    assert manifest.artifact is not None
    artifact = path / manifest.artifact
    if artifact.suffix in PICKLE_SUFFIXES:
        if not manifest.allow_pickle:
            raise FailedPrecondition(
                f"{artifact.name} is a pickle, which can run any code when loaded; save the model "
                "with skops (skops.io.dump) or set 'allow_pickle: true' in the manifest if you trust it"
            )
        if artifact.suffix == ".joblib":
            import joblib  # type: ignore[import-untyped]

            estimator = joblib.load(artifact)
        else:
            with artifact.open("rb") as f:
                estimator = pickle.load(f)  # noqa: S301 - allowed by the manifest
        return SklearnBackend(estimator, manifest)
    import skops.io as sio

    untrusted = [t for t in sio.get_untrusted_types(file=artifact) if t not in manifest.trusted_types]
    if untrusted:
        raise FailedPrecondition(
            f"skops refuses {artifact.name}: it contains types that are not trusted: "
            f"{', '.join(untrusted)}; if you trust them, list them under 'trusted_types' in the manifest"
        )
    estimator = sio.load(artifact, trusted=list(manifest.trusted_types) or None)
    return SklearnBackend(estimator, manifest)


def load_onnx(path: Path, manifest: Manifest) -> OnnxBackend:
    import onnxruntime as ort

    assert manifest.artifact is not None
    options = ort.SessionOptions()
    options.intra_op_num_threads = manifest.intra_op_threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(path / manifest.artifact), sess_options=options, providers=["CPUExecutionProvider"]
    )
    graph_inputs = {i.name for i in session.get_inputs()}
    graph_outputs = {o.name for o in session.get_outputs()}
    for kind, specs, graph in (("input", manifest.inputs, graph_inputs),
                               ("output", manifest.outputs, graph_outputs)):
        for spec in specs:
            if (spec.onnx_name or spec.name) not in graph:
                raise InvalidArgument(
                    f"{kind} {spec.name!r} is not in the ONNX graph, whose {kind}s are "
                    f"{', '.join(sorted(graph))}; set 'onnx_name' in the manifest"
                )
    return OnnxBackend(session, manifest)


def _import_class(path: Path, entrypoint: str, module_name: str) -> type[Model]:
    filename, _, class_name = entrypoint.partition(":")
    source = (path / filename).resolve()
    if path.resolve() not in source.parents:
        raise InvalidArgument(f"entrypoint {entrypoint!r} points outside the version folder")
    spec = importlib.util.spec_from_file_location(module_name, source)
    if spec is None or spec.loader is None:
        raise InvalidArgument(f"cannot import {source}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, Model):
        raise InvalidArgument(
            f"{filename} has no class {class_name!r} subclassing meshserve.runtimes.python.Model"
        )
    return cls


async def load_python(name: str, version: str, path: Path, manifest: Manifest) -> PythonBackend:
    assert manifest.entrypoint is not None
    module_name = f"meshserve_model_{name}_{version}".replace("-", "_").replace(".", "_")
    cls = await asyncio.to_thread(_import_class, path, manifest.entrypoint, module_name)
    model = cls(name, version, path, manifest.parameters)
    load = model.load
    if inspect.iscoroutinefunction(load):
        await load()
    else:
        await asyncio.to_thread(load)
    return PythonBackend(model)


async def load_backend(name: str, version: str, path: Path, manifest: Manifest) -> Backend:
    """Load one model version according to its manifest's framework."""
    if manifest.framework == "sklearn":
        return await asyncio.to_thread(load_sklearn, path, manifest)
    if manifest.framework == "onnx":
        return await asyncio.to_thread(load_onnx, path, manifest)
    if manifest.framework == "python":
        return await load_python(name, version, path, manifest)
    raise InvalidArgument(f"the python runtime does not serve framework {manifest.framework!r}")
