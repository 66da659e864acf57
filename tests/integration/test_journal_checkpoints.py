"""The running exchange's journal takes signed checkpoints of the audit chain periodically and at
shutdown, and refuses to start on a chain its latest checkpoint contradicts (a cut tail would
otherwise be written over). Real stores, the real writer, no mocks."""

from __future__ import annotations

from tests.conftest import TEST_MASTER_KEY

import asyncio
import json

import pytest

from billing.cli import main
from billing.ledger import Ledger
from billing.records import AuditEvent
from exchange.journal import ChainContradicted, Journal
from exchange.settings import load
from tests.integration.ledgerkit import NOV_NS, behind_triggers

KEY = "journal-checkpoint-key"


def journal(url: str, path) -> Journal:
    return Journal(load({}, database_url=url, checkpoint_file=str(path), checkpoint_key=KEY, checkpoint_every_s=1,
                        master_key=TEST_MASTER_KEY), Ledger())


async def put_events(j: Journal, n: int, first: int = 0) -> None:
    await j.ack(j.record(*[AuditEvent(NOV_NS + i, "decision", f"call-{i}", None, {"i": i}) for i in range(first, first + n)]))


def test_checkpoints_are_taken_periodically_and_at_shutdown_and_verify_against_them(db_url, tmp_path, monkeypatch):
    cp = tmp_path / "cp.jsonl"

    async def body():
        j = journal(db_url, cp)
        await j.open()
        await j.start()
        try:
            await put_events(j, 5)
            for _ in range(40):  # the periodic task's first checkpoint
                await asyncio.sleep(0.1)
                if cp.exists() and cp.read_text().strip():
                    break
            assert json.loads(cp.read_text().splitlines()[-1])["seq"] == 5
            await put_events(j, 3, 5)
        finally:
            await j.close()

    asyncio.run(body())
    lines = [json.loads(x) for x in cp.read_text().splitlines()]
    assert [x["seq"] for x in lines] == [5, 8]  # the last one at shutdown; an unchanged head is not signed twice
    monkeypatch.setenv("EXCHANGE_CHECKPOINT_KEY", KEY)
    assert main(["audit", "verify", "--database-url", db_url, "--checkpoint", str(cp)]) == 0


def test_the_journal_refuses_to_start_on_a_chain_cut_after_its_checkpoint(db_url, tmp_path):
    cp = tmp_path / "cp.jsonl"

    async def body():
        j = journal(db_url, cp)
        await j.open()
        await j.start()
        await put_events(j, 12)
        await j.close()
        j = journal(db_url, cp)
        await j.open()
        try:
            await behind_triggers(j.store, "audit", "DELETE FROM audit WHERE seq > 10")
            with pytest.raises(ChainContradicted, match="CUT"):
                await j.start()
        finally:
            await j.store.close()

    asyncio.run(body())
