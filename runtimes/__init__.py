"""meshserve runtimes: one package per language."""
