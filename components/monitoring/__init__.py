"""What the served model does in production: the inference log (and, read from it, drift checks)."""
