"""Tickets, Cases and Actions (R-W*, R-E*): ``rules`` are pure, ``ops`` the host operations."""
