"""The staged pipeline (SPEC §3).

sent-ID check → dedup → auto-generated → plus-address → match → route →
sender budget → apply. One stage a file; ``runner`` runs them in this order.
"""

# A stage's name is the same string in config, the trace, logs and metric labels
# (DESIGN); ``parse`` is the runner's own step before the stages.
STAGE_NAMES = ("sent-id", "dedup", "auto-generated", "plus-address", "match", "route",
               "sender-budget", "apply")
