"""Search spaces shipped with cellsearch (YAML files; see the README for the format)."""
