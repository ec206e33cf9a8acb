"""`kit test`: the parent process that runs the harness (kit.worker.harness) in a fresh interpreter, and the events between them."""
