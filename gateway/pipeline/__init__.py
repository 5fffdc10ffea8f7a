"""The staged pipeline (SPEC §3).

sent-ID check → dedup → auto-generated → plus-address → match → route → apply.
"""
