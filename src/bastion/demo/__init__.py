"""The embedded example: benign models and crafted malicious files with harmless payloads."""
