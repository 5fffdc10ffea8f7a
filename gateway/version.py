"""mailgate's version: one place for the metrics' build info, the API document and the banner."""
VERSION = "0.1.0"
