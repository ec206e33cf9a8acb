"""Proving a worker: `kit test`'s parent process, the harness in a fresh interpreter, the events between them."""
