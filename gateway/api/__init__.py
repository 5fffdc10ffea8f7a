"""HTTP API handlers, one module per resource (SPEC §5.3)."""
