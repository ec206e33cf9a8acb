"""Running a worker locally: RunPod's queue emulated, worker processes supervised, `kit serve` and `kit bench`."""
