"""A parse bomb stand-in for the preparing workers (tests/unit/test_runner.py).

Its own small module: a worker unpickles it with the settings, and importing the
test module instead would take a cold worker longer than the deadline under test.
"""
from __future__ import annotations

import time

from gateway.mail_classes import Classifier


class SlowClassifier(Classifier):
    """Classifying a mail that says "bomb" never ends (well: a minute)."""

    def classify(self, mail, autogen_rule):
        if b"bomb" in mail.raw:
            time.sleep(60)
        return super().classify(mail, autogen_rule)
