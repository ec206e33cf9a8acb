"""The user interfaces beyond the CLI: the notebook panel and the nbconvert exporter."""
