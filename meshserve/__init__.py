"""meshserve: one gRPC door to many models."""

__version__ = "0.1.0"
