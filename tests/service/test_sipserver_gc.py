"""The SIP server's transaction table stays out of the cyclic garbage collector's walk.

A server answering thousands of INVITEs a second remembers tens of thousands of transactions
(64*T1 each, RFC 3261 section 17.2.1); were each a tracked object, every full collection
would walk them all and hold the event loop long enough for the UDP backlog to pass the
shedding threshold. Its entries are plain tuples of atoms, which the collector untracks.
"""

from __future__ import annotations

import gc

from analyzer.sipserver import SipServerCore
from tests.service.invites import FIXTURE_AT, fixture_call, with_branch


def test_transactions_are_untracked_after_a_collection() -> None:
    core = SipServerCore()
    for n in range(50):
        data = with_branch(fixture_call("alpha_a"), f"z9hG4bK-gc-{n}")
        decision = core.receive(data, at=FIXTURE_AT, shed=n % 2 == 0)
        if decision.job is not None:
            if n % 3 == 0:  # a pending transaction changed by a CANCEL, then answered
                cancel = data.replace(b"INVITE", b"CANCEL")
                core.receive(cancel, at=FIXTURE_AT)
            core.trying(decision.job)
            core.shed(decision.job)
    gc.collect()
    table = core._transactions
    assert len(table) > 50
    assert not any(gc.is_tracked(key) or gc.is_tracked(entry) for key, entry in table.items())
