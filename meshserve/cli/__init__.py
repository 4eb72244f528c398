"""The ``meshserve`` command line: run a local mesh, list what it serves, call a model."""
