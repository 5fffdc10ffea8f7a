"""The wire: LMTP/SMTP sessions (aiosmtpd) and the polled mailboxes' clients (IMAP, POP3,
Graph), and the one SMTP client for relays is aiosmtplib's. Nothing here decides what a
message means; sessions hand every transaction to intake, mailboxes hand bytes to the
poller. Workarounds for the libraries live in ``*_fixes.py``, each naming why."""
