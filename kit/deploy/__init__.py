"""`kit deploy`: a RunPod serverless template and endpoint from a notebook or a worker directory."""
