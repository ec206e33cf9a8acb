"""Code that runs inside the worker's own process.

worker_loop.py and batching.py are copied into every worker directory as they are
(they never import the kit); harness.py (`kit test`), reloader.py (`kit serve --watch`)
and launch.py (every worker `kit serve` starts) run the exported worker in its process.
"""
