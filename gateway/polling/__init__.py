"""Polled mailboxes (R-I4, R-I5, R-B5): one ``poller`` per connector, kept in step with
the directory by the ``supervisor``; ``mailboxes`` opens the protocol's session."""
