"""Serving pieces that need no BentoML: the request guard (auth, limits, access log) and input rules."""
