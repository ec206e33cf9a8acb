"""Files the kit copies into every worker directory as they are (they never import the kit)."""
