"""Evidence for SLA disputes: the report document, its human rendering, signed bundles."""
