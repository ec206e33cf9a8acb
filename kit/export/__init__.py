"""Building a worker from a notebook: notebook -> cells -> analysis -> requirements -> worker directory."""
