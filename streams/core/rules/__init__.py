"""Partner allow-rules: the YAML model, loading with line-accurate errors, static checks."""
