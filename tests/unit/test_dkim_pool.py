"""Signing off the event loop (R-O4, issue 18): a batch is signed ahead on the delivery's
own threads, and each mail gets its own signature or its own error. (That OpenSSL
signs in parallel threads is a property of the machine's cores as much as of the
code: bench/outbound.py measures it.)"""
from __future__ import annotations

import threading

import pytest

from gateway.outbound.signing import SigningPool


async def test_r_o4_a_batch_is_signed_on_the_pools_threads_each_mail_its_own_result():
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def signer(raw: bytes):
        seen.append(threading.get_ident())
        if raw == b"bad":
            raise ValueError("cannot sign this one")
        return b"signed " + raw, "example.com"

    pool = SigningPool(signer)
    try:
        mails = [(n, f"mail {n}".encode()) for n in range(30)] + [(99, b"bad")]
        futures = pool.ahead(mails)
        assert set(futures) == {n for n, _ in mails}
        for n in range(30):
            assert await futures[n] == (f"signed mail {n}".encode(), "example.com")
        with pytest.raises(ValueError, match="cannot sign this one"):
            await futures[99]
    finally:
        pool.close()
    assert seen and loop_thread not in seen


async def test_r_o4_a_pool_closed_by_stop_signs_again_after_a_restart():
    pool = SigningPool(lambda raw: (raw, None), workers=1)
    assert await pool.ahead([(1, b"x")])[1] == (b"x", None)
    pool.close()
    assert await pool.ahead([(2, b"y")])[2] == (b"y", None)
    pool.close()
