"""``python -m meshserve.runtimes.python``: run the Python runtime."""

from .server import main

if __name__ == "__main__":
    main()
