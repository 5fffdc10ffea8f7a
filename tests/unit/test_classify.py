"""R-B4: the classifier's rule set is data, versioned, and held to a corpus of real shapes."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.mail import Mail
from gateway.mail_classes import CLASSES, CLASSIFIER, RulesError, bounce_of, load_rules
from gateway.pipeline.autogen_rules import detect

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "classes"
MANIFEST = tomllib.loads((CORPUS / "MANIFEST.toml").read_text())["files"]


def corpus_mail(name: str) -> Mail:
    return Mail((CORPUS / name).read_bytes().replace(b"\n", b"\r\n"), connector="support")


def test_r_b4_every_corpus_file_is_in_the_manifest_and_every_class_has_a_sample():
    assert sorted(MANIFEST) == sorted(p.name for p in CORPUS.glob("*.eml"))
    assert {entry["class"] for entry in MANIFEST.values()} == {*CLASSES, ""}


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_r_b4_the_corpus_is_classed_as_its_manifest_says(name):
    want = MANIFEST[name]
    mail = corpus_mail(name)
    klass, rule, _ = CLASSIFIER.classify(mail, detect(mail))
    assert (klass or "", rule.name if rule else "") == (want["class"], want["rule"])
    if klass == "bounce":
        assert (bounce_of(mail) or "") == want["bounce_of"]


def test_r_b4_person_mail_quoting_a_message_id_is_no_bounce():
    mail = corpus_mail("none-person-writes-about-a-bounce.eml")
    assert detect(mail) is None
    assert CLASSIFIER.classify(mail, None) == (None, None, None)


def test_r_b4_the_shipped_rules_carry_a_version():
    assert CLASSIFIER.version >= 1
    assert {rule.klass for rule in CLASSIFIER.rules} == set(CLASSES)


@pytest.mark.parametrize("text, words", [
    ('[[rule]]\nname = "x"\nclass = "list"\nheader = "list-id"\n', "write version = 1"),
    ('version = 1\n[[rule]]\nname = "x"\nclass = "spam"\nheader = "a"\n',
     "class = 'spam': use one of auto_reply, bounce, list, notification"),
    ('version = 1\n[[rule]]\nname = "x"\nclass = "list"\nheadr = "a"\n',
     "unknown key(s) ['headr']"),
    ('version = 1\n[[rule]]\nname = "x"\nclass = "list"\n', "no condition"),
    ('version = 1\n[[rule]]\nname = "x"\nclass = "list"\nsubject = "("\n',
     "subject is not a regular expression"),
    ('version = 1\n[[rule]]\nname = "x"\nclass = "list"\nmatches = "a"\n',
     "matches needs the header"),
    ('version = 1\n[[rule]]\nname = "x"\nclass = "list"\nheader = "a"\n'
     '[[rule]]\nname = "x"\nclass = "list"\nheader = "b"\n', "used twice"),
    ('version = 1\n[[rule]]\nname = "x"\nclass = "bounce"\ncontent_type = "multipart/report"\n',
     'content_type must be a list of strings, e.g. ["multipart/report"]'),
])
def test_r_b4_a_wrong_rule_file_says_which_rule_and_what_to_write(text, words):
    with pytest.raises(RulesError) as info:
        load_rules(text, "rules.toml")
    assert words in str(info.value)
    assert str(info.value).startswith("rules.toml")
