"""Persistence: the Store protocol (``base``) and its backends (``sqlite``).

SQL lives here and nowhere else; so does every database driver. The rest of
mailgate speaks to ``storage.base`` only, and ``base.open_store(url)`` picks the
backend.
"""
