"""Building a worker from a notebook: notebook -> cells -> transforms, facts, checks -> requirements -> worker directory."""
