"""The catalog's unit of work: ``with catalog.transaction() as tx`` commits every write of the block
together on normal exit, keeps none of them when the block raises, and refuses a write after it ends."""

from __future__ import annotations

import sqlite3

import pytest

from vgmed_build.catalog import CatalogError, Transaction, open_catalog


def _errors(build) -> list[tuple]:
    """The errors table as another connection sees it (what is committed)."""
    with sqlite3.connect(build / "catalog.sqlite") as other:
        return other.execute("SELECT stage, item, message FROM errors ORDER BY id").fetchall()


def test_writes_commit_together_and_roll_back_together(tmp_path):
    with open_catalog(tmp_path) as catalog:
        with catalog.transaction() as tx:
            assert type(tx) is Transaction
            tx.record_error("generate", "region a", "first")
            tx.set_state("k", "1")
            assert _errors(tmp_path) == []  # nothing visible before the block ends
        assert _errors(tmp_path) == [("generate", "region a", "first")]

        with pytest.raises(RuntimeError, match="planted"), catalog.transaction() as tx:
            tx.record_error("generate", "region b", "second")
            tx.clear_errors("generate", "region a")
            tx.set_state("k", "2")
            raise RuntimeError("planted")
        assert _errors(tmp_path) == [("generate", "region a", "first")]
        assert catalog.get_state("k") == "1"


def test_a_write_after_the_block_is_refused(tmp_path):
    with open_catalog(tmp_path) as catalog:
        with catalog.transaction() as tx:
            tx.set_state("k", "1")
        with pytest.raises(CatalogError, match="transaction is over"):
            tx.set_state("k", "2")  # would otherwise commit on its own, outside any unit of work
        assert catalog.get_state("k") == "1"
