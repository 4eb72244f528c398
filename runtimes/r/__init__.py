"""The R runtime: serves R models (``.rds`` files or R scripts) from a pool of Rscript workers.

R never runs inside the server's process: :class:`~.pool.RWorkerPool` keeps long-lived
``Rscript`` workers (``R/worker.R``) and talks to them over pipes with a binary framing
(:mod:`.protocol`), so an R crash costs one request and one worker, never the server.
"""
