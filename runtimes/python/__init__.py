"""The Python runtime: serves scikit-learn, ONNX and Python-class models over OIP gRPC.

Run it with ``python -m meshserve.runtimes.python --model-repository DIR``. Write a
Python model by subclassing :class:`Model`.
"""

from .model import Model

__all__ = ["Model"]
