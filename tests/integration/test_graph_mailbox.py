"""GraphMailbox against the local Graph fake (R-I4, R-I5, R-I6, R-C3, R-C4, R-B5).

Each test drives the mailbox the way the poller does (``async with`` per round,
one object across rounds) and asserts on what the fake recorded, so waits,
concurrency and token refreshes are measured on the server side, not trusted.
"""
from __future__ import annotations

import asyncio

import jwt
import pytest

from gateway.polling.mailboxes import open_mailbox
from gateway.protocols.graph import GraphMailbox
from gateway.protocols.mailbox import Credentials, Fetched, MailboxError
from tests.graph_fake import CLIENT_ID, MAILBOX, GraphFake, make_client_certificate


def mailbox_for(fake: GraphFake, credentials: Credentials | None = None,
                **overrides) -> GraphMailbox:
    """The mailbox for a connector pointed at ``fake``; ``throttle_budget`` and
    ``timeout`` are mailbox options, everything else a connector field."""
    options = {k: overrides.pop(k) for k in ("throttle_budget", "timeout", "max_size")
               if k in overrides}
    mailbox = open_mailbox(fake.connector(**overrides), credentials or fake.credentials(),
                           **options)
    assert isinstance(mailbox, GraphMailbox)
    return mailbox


def retry_gap(fake: GraphFake, status: int) -> float:
    """Seconds between the refused request and its retry (same method and path)."""
    graph = fake.graph_requests
    refused = next(i for i, r in enumerate(graph) if r.status == status)
    retry = next(r for r in graph[refused + 1:]
                 if (r.method, r.path) == (graph[refused].method, graph[refused].path))
    return retry.time - graph[refused].time


@pytest.fixture
def client_cert(tmp_path, graph_fake):
    """A certificate uploaded to the fake's app registration."""
    cert = make_client_certificate(tmp_path / "cert")
    graph_fake.register_app(CLIENT_ID, certificate=cert.certificate)
    return cert


# -- R-I6 tokens --------------------------------------------------------------------------

async def test_r_i6_secret_gets_a_token_and_every_call_is_bearer_with_immutable_ids(graph_fake):
    graph_fake.add_message(subject="one")
    async with mailbox_for(graph_fake) as mailbox:
        keys = await mailbox.keys("INBOX")
        fetched = await mailbox.fetch("INBOX", keys)
    assert [f.key for f in fetched] == keys and b"Subject: one" in fetched[0].raw
    [token] = graph_fake.token_requests
    assert token.form["client_secret"] and token.form["grant_type"] == "client_credentials"
    assert token.form["scope"].split()[0] == "https://graph.microsoft.com/.default"
    for request in graph_fake.graph_requests:
        assert request.headers["Prefer"] == 'IdType="ImmutableId"'
        assert request.headers["Authorization"].startswith("Bearer ")


async def test_r_i6_pem_key_and_thumbprint_sign_an_rs256_assertion(graph_fake, client_cert):
    mailbox = mailbox_for(graph_fake, Credentials(), certificate_file=str(client_cert.key_file),
                          certificate_thumbprint=client_cert.thumbprint)
    async with mailbox:
        assert await mailbox.keys("INBOX") == []
    [token] = graph_fake.token_requests
    assert "client_secret" not in token.form
    header = jwt.get_unverified_header(token.form["client_assertion"])
    assert header["alg"] == "RS256" and "x5t" in header


async def test_r_i6_pfx_with_password_signs_a_ps256_assertion(graph_fake, client_cert):
    mailbox = mailbox_for(graph_fake, Credentials(certificate_password=client_cert.password),
                          certificate_file=str(client_cert.pfx_file))
    async with mailbox:
        assert await mailbox.keys("INBOX") == []
    header = jwt.get_unverified_header(graph_fake.token_requests[0].form["client_assertion"])
    assert header["alg"] == "PS256" and "x5t#S256" in header


async def test_r_i6_pem_with_its_certificate_needs_no_thumbprint(graph_fake, client_cert):
    mailbox = mailbox_for(graph_fake, Credentials(),
                          certificate_file=str(client_cert.combined_file))
    async with mailbox:
        assert await mailbox.keys("INBOX") == []


async def test_r_i6_wrong_pfx_password_is_a_mailbox_error(graph_fake, client_cert):
    mailbox = mailbox_for(graph_fake, Credentials(certificate_password="not-it"),
                          certificate_file=str(client_cert.pfx_file))
    with pytest.raises(MailboxError, match="sign-in failed"):
        await mailbox.open()


async def test_r_c3_wrong_secret_reports_the_identity_platforms_words(graph_fake):
    mailbox = mailbox_for(graph_fake, graph_fake.credentials("wrong-secret"))
    with pytest.raises(MailboxError) as refused:
        await mailbox.test()
    assert str(refused.value).startswith("invalid_client: AADSTS7000215: Invalid client secret")
    assert graph_fake.graph_requests == []


async def test_r_c3_unregistered_certificate_is_refused_with_the_servers_words(graph_fake,
                                                                               tmp_path):
    stranger = make_client_certificate(tmp_path / "stranger")
    mailbox = mailbox_for(graph_fake, Credentials(), certificate_file=str(stranger.key_file),
                          certificate_thumbprint=stranger.thumbprint)
    with pytest.raises(MailboxError, match="AADSTS700027: The certificate with identifier"):
        await mailbox.test()


async def test_r_c3_test_logs_in_and_reads_one_folder(graph_fake):
    graph_fake.add_message()
    graph_fake.add_message()
    assert await mailbox_for(graph_fake).test() == "graph: logged in; INBOX holds 2 message(s)"


async def test_r_i6_short_lived_tokens_are_renewed_before_they_expire(graph_fake):
    """msal renews a token in its last five minutes; the fake's tokens live one second,
    so a later round must come with a new token, never with a rejected one."""
    graph_fake.expires_in = 1
    graph_fake.add_message()
    mailbox = mailbox_for(graph_fake)
    async with mailbox:
        assert len(await mailbox.keys("INBOX")) == 1
    await asyncio.sleep(1.2)
    async with mailbox:
        assert len(await mailbox.keys("INBOX")) == 1
    assert len(graph_fake.token_requests) >= 2
    assert all(r.status == 200 for r in graph_fake.graph_requests)


async def test_r_i6_a_revoked_token_costs_one_refresh_and_a_retry(graph_fake):
    ids = [graph_fake.add_message(subject=f"m{i}") for i in range(8)]
    graph_fake.latency = 0.02           # let the four parallel fetches overlap the 401s
    mailbox = mailbox_for(graph_fake)
    async with mailbox:
        assert await mailbox.keys("INBOX") == ids
        graph_fake.revoke_tokens()
        fetched = await mailbox.fetch("INBOX", ids)
    assert [f.key for f in fetched] == ids
    assert len(graph_fake.token_requests) == 2          # one refresh for all the 401s
    assert any(r.status == 401 for r in graph_fake.graph_requests)


async def test_r_i6_a_token_graph_keeps_refusing_is_an_error_after_one_retry(graph_fake):
    mailbox = mailbox_for(graph_fake)
    async with mailbox:
        graph_fake.expires_in = 0       # every new token is already expired
        graph_fake.revoke_tokens()
        with pytest.raises(MailboxError, match="Graph 401 InvalidAuthenticationToken: "
                                               "Access token has expired"):
            await mailbox.keys("INBOX")
    assert [r.status for r in graph_fake.graph_requests] == [401, 401]


# -- R-I4 listing, fetching, removing ---------------------------------------------------

async def test_r_i4_keys_follow_next_links_across_pages_oldest_first(graph_fake):
    graph_fake.max_page_size = 4
    ids = [graph_fake.add_message(subject=f"m{i}") for i in range(10)]
    async with mailbox_for(graph_fake) as mailbox:
        assert await mailbox.keys("INBOX") == ids
    pages = [r for r in graph_fake.graph_requests if r.path.endswith("/messages")]
    assert len(pages) == 3
    # later pages came from the nextLink, which names the user by id, not by UPN
    assert MAILBOX in pages[0].path and MAILBOX not in pages[2].path
    assert "$skip=8" in pages[2].query


async def test_r_i4_fetch_returns_exact_bytes_and_leaves_out_vanished_messages(graph_fake):
    raw = b"Subject: exact\r\nX-Odd: \xff\xfe bytes\r\n\r\nbody\r\n"
    keep = graph_fake.add_message(raw)
    gone = graph_fake.add_message()
    async with mailbox_for(graph_fake) as mailbox:
        keys = await mailbox.keys("INBOX")
        del graph_fake.mailbox().messages[gone]
        fetched = await mailbox.fetch("INBOX", keys)
        await mailbox.remove("INBOX", [gone])          # already gone counts as done
    assert fetched == [Fetched(keep, raw)]


async def test_r_i4_remove_deletes_into_deleted_items(graph_fake):
    first, second = graph_fake.add_message(), graph_fake.add_message()
    async with mailbox_for(graph_fake) as mailbox:
        await mailbox.remove("INBOX", [first])
    assert graph_fake.ids("Inbox") == [second]
    assert graph_fake.ids("Deleted Items") == [first]
    assert [r.method for r in graph_fake.graph_requests] == ["DELETE"]


async def test_r_b5_keep_on_server_marks_read_and_keeps(graph_fake):
    first, second = graph_fake.add_message(), graph_fake.add_message()
    async with mailbox_for(graph_fake, keep_on_server=True) as mailbox:
        await mailbox.remove("INBOX", [first])
    assert graph_fake.ids("Inbox") == [first, second]
    assert graph_fake.message(first).is_read and not graph_fake.message(second).is_read
    assert [r.method for r in graph_fake.graph_requests] == ["PATCH"]


async def test_r_b5_move_to_moves_processed_mail_into_the_folder(graph_fake):
    graph_fake.add_folder("Inbox/Processed")
    first, second = graph_fake.add_message(), graph_fake.add_message()
    async with mailbox_for(graph_fake, move_to="Inbox/Processed") as mailbox:
        await mailbox.remove("INBOX", [first])
    assert graph_fake.ids("Inbox") == [second]
    assert graph_fake.ids("Inbox/Processed") == [first]
    assert graph_fake.ids("Deleted Items") == []
    assert [r.method for r in graph_fake.graph_requests][-1] == "POST"


async def test_r_b5_move_to_a_missing_folder_fails_and_keeps_the_mail(graph_fake):
    first = graph_fake.add_message()
    async with mailbox_for(graph_fake, move_to="Archive/Nowhere") as mailbox:
        with pytest.raises(MailboxError, match="Graph folder 'Archive/Nowhere' not found"):
            await mailbox.remove("INBOX", [first])
    assert graph_fake.ids("Inbox") == [first]
    with pytest.raises(MailboxError, match="'Archive/Nowhere' not found"):   # R-C3 says so
        await mailbox_for(graph_fake, move_to="Archive/Nowhere").test()


async def test_r_i3_graph_names_the_messages_over_the_size_limit(graph_fake):
    small = graph_fake.add_message()
    big = graph_fake.add_message(b"Subject: big\r\n\r\n" + b"x" * 3_000_000 + b"\r\n")
    async with mailbox_for(graph_fake, max_size=2_000_000) as mailbox:
        keys = await mailbox.keys("INBOX")
    assert keys == [small, big]
    assert list(mailbox.too_large) == [big] and mailbox.too_large[big] > 3_000_000


async def test_r_i4_graph_errors_carry_graphs_code_and_message(graph_fake):
    graph_fake.fail_next(1, 403, retry_after=None)
    async with mailbox_for(graph_fake) as mailbox:
        with pytest.raises(MailboxError, match="^Graph 403 ErrorAccessDenied: Access is "
                                               "denied. Check credentials"):
            await mailbox.keys("INBOX")


# -- R-I6 throttling and concurrency ------------------------------------------------------

@pytest.mark.parametrize("status", [429, 503])
async def test_r_i6_retry_after_is_honoured(graph_fake, status):
    graph_fake.add_message()
    graph_fake.fail_next(1, status, retry_after="1")
    async with mailbox_for(graph_fake) as mailbox:
        assert len(await mailbox.keys("INBOX")) == 1
    assert [r.status for r in graph_fake.graph_requests] == [status, 200]
    assert retry_gap(graph_fake, status) >= 1.0


async def test_r_i6_throttling_without_retry_after_backs_off(graph_fake):
    graph_fake.fail_next(1, 503, retry_after=None)
    async with mailbox_for(graph_fake) as mailbox:
        assert await mailbox.keys("INBOX") == []
    assert retry_gap(graph_fake, 503) >= 1.0


async def test_r_i6_endless_throttling_gives_up_within_the_budget(graph_fake):
    graph_fake.fail_next(100, 429, retry_after="1")
    async with mailbox_for(graph_fake, throttle_budget=1.5) as mailbox:
        with pytest.raises(MailboxError, match="kept throttling.*Graph 429 "
                                               "ApplicationThrottled"):
            await mailbox.keys("INBOX")
    assert len(graph_fake.graph_requests) == 2          # waited 1 s once, not a 2nd time


async def test_r_i6_at_most_four_requests_in_flight_per_mailbox(graph_fake):
    ids = [graph_fake.add_message(subject=f"m{i}") for i in range(20)]
    graph_fake.latency = 0.05
    async with mailbox_for(graph_fake) as mailbox:
        keys = await mailbox.keys("INBOX")
        fetched = await mailbox.fetch("INBOX", keys)
        await mailbox.remove("INBOX", keys)
    assert [f.key for f in fetched] == ids
    assert graph_fake.ids("Inbox") == []
    assert 1 < graph_fake.max_in_flight <= 4


async def test_r_i6_a_throttled_fetch_pauses_the_whole_mailbox(graph_fake):
    """After a 429 no request of the mailbox starts until Retry-After has passed
    (those already on the wire may finish)."""
    ids = [graph_fake.add_message(subject=f"m{i}") for i in range(12)]
    graph_fake.latency = 0.05
    graph_fake.fail_next(1, 429, retry_after="1", path_contains="/$value")
    async with mailbox_for(graph_fake) as mailbox:
        fetched = await mailbox.fetch("INBOX", ids)
    assert [f.key for f in fetched] == ids
    refused = next(r for r in graph_fake.graph_requests if r.status == 429)
    paused = [r for r in graph_fake.graph_requests
              if refused.answered + 0.1 < r.time < refused.time + 1.0]
    assert paused == []
    assert retry_gap(graph_fake, 429) >= 1.0


# -- R-I5 folders -------------------------------------------------------------------------

async def test_r_i5_inbox_subfolder_resolves_through_child_folders(graph_fake):
    graph_fake.add_message(subject="inbox")
    billing = graph_fake.add_message(folder="Inbox/Billing", subject="bill")
    graph_fake.add_message(folder="Billing", subject="top-level namesake")
    mailbox = mailbox_for(graph_fake, folders=("INBOX", "Inbox/Billing"))
    assert mailbox.folders() == ["INBOX", "Inbox/Billing"]
    for _ in range(2):                                  # two rounds, one lookup
        async with mailbox:
            assert await mailbox.keys("Inbox/Billing") == [billing]
    lookups = [r for r in graph_fake.graph_requests if r.path.endswith("/childFolders")]
    assert len(lookups) == 1
    assert "/mailFolders/inbox/" in lookups[0].path
    assert "displayName eq 'Billing'" in lookups[0].query


async def test_r_i5_top_level_and_nested_paths_with_quotes(graph_fake):
    nested = graph_fake.add_message(folder="Projects/Bob's 2024", subject="p")
    async with mailbox_for(graph_fake) as mailbox:
        assert await mailbox.keys("projects/BOB'S 2024") == [nested]
    lookups = [r for r in graph_fake.graph_requests if r.path.endswith("/childFolders")]
    assert "/mailFolders/msgfolderroot/" in lookups[0].path
    assert "displayName eq 'BOB''S 2024'" in lookups[1].query


async def test_r_i5_a_missing_folder_is_named_in_the_error(graph_fake):
    async with mailbox_for(graph_fake) as mailbox:
        with pytest.raises(MailboxError, match="'Inbox/Nope' not found"):
            await mailbox.keys("Inbox/Nope")


async def test_r_i5_a_recreated_folder_is_looked_up_again(graph_fake):
    graph_fake.add_folder("Inbox/Billing")
    mailbox = mailbox_for(graph_fake)
    async with mailbox:
        assert await mailbox.keys("Inbox/Billing") == []
    box = graph_fake.mailbox()
    old = graph_fake.add_folder("Inbox/Billing")
    del box.folders[old]                                # deleted, then made anew
    fresh = graph_fake.add_message(folder="Inbox/Billing")
    async with mailbox:
        assert await mailbox.keys("Inbox/Billing") == [fresh]


# -- R-C4 TLS -----------------------------------------------------------------------------

async def test_r_c4_an_authority_signed_by_another_ca_is_refused(graph_fake):
    mailbox = mailbox_for(graph_fake, ca_file=graph_fake.stranger_ca_file)
    with pytest.raises(MailboxError, match="CERTIFICATE_VERIFY_FAILED"):
        await mailbox.open()
    assert graph_fake.token_requests == []


async def test_r_c4_a_graph_signed_by_another_ca_is_refused(graph_fake, tmp_path):
    other = await GraphFake(tmp_path / "other").start()
    try:
        mailbox = mailbox_for(graph_fake, graph_base_url=other.graph_base_url)
        async with mailbox:                             # the token came from the trusted one
            with pytest.raises(MailboxError, match="not trusted"):
                await mailbox.keys("INBOX")
        assert other.graph_requests == []
    finally:
        await other.stop()


async def test_r_c4_the_environments_ca_bundle_does_not_override_the_connector(
        graph_fake, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", graph_fake.stranger_ca_file)
    monkeypatch.setenv("CURL_CA_BUNDLE", graph_fake.stranger_ca_file)
    async with mailbox_for(graph_fake) as mailbox:
        assert await mailbox.keys("INBOX") == []


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
async def test_r_c4_verification_off_only_when_the_connector_says_so(graph_fake):
    async with mailbox_for(graph_fake, ca_file="", tls_verify=False) as mailbox:
        assert await mailbox.keys("INBOX") == []
    with pytest.raises(MailboxError, match="CERTIFICATE_VERIFY_FAILED"):
        await mailbox_for(graph_fake, ca_file="").open()


async def test_r_i4_a_silent_graph_times_out(graph_fake):
    graph_fake.latency = 2
    async with mailbox_for(graph_fake, timeout=0.5) as mailbox:
        with pytest.raises(MailboxError, match="did not answer within 0.5 s"):
            await mailbox.keys("INBOX")



async def test_r_i4_graph_names_large_messages_by_their_mapi_size(graph_fake):
    from gateway.protocols.mailbox import LARGE_MESSAGE
    small = graph_fake.add_message(b"Subject: small\r\n\r\nhi\r\n")
    big = graph_fake.add_message(b"Subject: big\r\n\r\n" + b"x" * (LARGE_MESSAGE + 10))
    mailbox = GraphMailbox(graph_fake.connector(), graph_fake.credentials())
    async with mailbox:
        keys = await mailbox.keys("Inbox")
    assert set(keys) == {small, big} and mailbox.large == {big}
    listed = [r for r in graph_fake.graph_requests if r.path.endswith("/messages")]
    assert "singleValueExtendedProperties" in listed[0].query
