"""Code that runs inside the worker's own process.

worker_loop.py and batching.py are copied into every worker directory as they are
(they never import the kit); harness.py (`kit test`), reloader.py (`kit serve --watch`)
and launch.py (every worker `kit serve` starts) run the exported worker in its process.
loader.py loads handler.py cell by cell and maps its lines back to the notebook, for the
harness and the reloader; the harness's jobs go through the SDK's per-job path in
sdk_jobs.py and are judged against the test cells' own calls in direct_calls.py.
"""
