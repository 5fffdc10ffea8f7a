"""Mail the gateway sends (R-O*): ``compose`` writes it, ``dkim`` signs it, ``delivery``
drains the queue through the relays."""
