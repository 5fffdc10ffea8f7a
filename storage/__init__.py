"""Persistence: the Store protocol's implementations and their migrations.

SQL lives here and nowhere else. ``sqlite.SqliteStore`` is the embedded
default; migrations are numbered files in ``migrations/`` applied at start.
"""
