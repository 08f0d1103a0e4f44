"""The cell journal: exact value round trips, batched commits by the writer thread, deletion of
checkpointed row groups, refusal of another run's journal, and failures that are loud."""

from __future__ import annotations

import datetime as dt
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sluiceway.errors import StorageError
from sluiceway.storage.journal import (
    GROUP_ROW_INDEX,
    JOURNAL_FILE_NAME,
    CellJournal,
    count_entries,
    decode_payload,
    encode_payload,
    journal_files,
    read_journal_keys,
    remove_journal,
)


@pytest.mark.parametrize(
    "value",
    [
        {"text": "Ünïcode ✓", "n": 3, "ok": True, "none": None},
        {"score": 0.1 + 0.2, "big": 2**62, "tiny": 5e-324},
        {"facts": {"tone": "warm", "nested": [1, [2, {"x": 3.5}]]}},
        {"vec": [0.125, -1.0, 3.0e10]},
        {"when": dt.datetime(2025, 3, 1, 9, 30, tzinfo=dt.UTC), "day": dt.date(2025, 3, 2)},
        {"naive": dt.datetime(2025, 3, 1, 9, 30, 15, 123456), "t": dt.time(8, 15)},
    ],
)
def test_payloads_round_trip_exactly(value: dict[str, object]) -> None:
    assert decode_payload(encode_payload(value)) == value


def test_arrays_keep_their_dtype_and_non_finite_floats_survive() -> None:
    decoded = decode_payload(encode_payload({"a": np.arange(3, dtype=np.float32), "x": math.inf}))
    assert decoded["a"].dtype == np.float32
    assert decoded["a"].tolist() == [0.0, 1.0, 2.0]
    assert decoded["x"] == math.inf


def test_unknown_objects_are_refused() -> None:
    with pytest.raises(TypeError, match="not journaled"):
        encode_payload({"x": object()})


def _journal(tmp_path: Path, run_id: str = "run-a", fingerprint: str = "f1") -> CellJournal:
    return CellJournal.create(tmp_path, run_id=run_id, config_fingerprint=fingerprint)


def test_recorded_entries_are_committed_by_the_writer_and_read_back(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    journal.start()
    for row in range(50):
        journal.record(row // 10, "text", row, encode_payload({"text": f"t{row}"}))
    journal.record(4, "batch", GROUP_ROW_INDEX, encode_payload({"rows": [40], "values": []}))
    journal.close()
    stats = journal.statistics()
    assert stats.recorded == stats.committed == 51
    assert 1 <= stats.batches <= 51
    again = CellJournal.open_existing(tmp_path, run_id="run-a", config_fingerprint="f1")
    entries = again.read_entries({1, 4})
    again.close()
    assert sorted(entries) == [1, 4]
    assert decode_payload(entries[1][("text", 13)]) == {"text": "t13"}
    assert ("batch", GROUP_ROW_INDEX) in entries[4]
    assert count_entries(tmp_path / JOURNAL_FILE_NAME) == 51


def test_forgetting_a_row_group_deletes_its_entries_after_its_puts(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    journal.start()
    journal.record(0, "text", 0, "{}")
    journal.record(1, "text", 5, "{}")
    journal.forget_row_group(0)
    journal.close()
    assert read_journal_keys(tmp_path / JOURNAL_FILE_NAME) == {(1, "text", 5)}
    assert journal.statistics().forgotten_row_groups == 1


def test_the_journal_is_in_wal_mode(tmp_path: Path) -> None:
    _journal(tmp_path).close()
    connection = sqlite3.connect(tmp_path / JOURNAL_FILE_NAME)
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        connection.close()


def test_a_second_journal_in_the_same_directory_is_refused(tmp_path: Path) -> None:
    _journal(tmp_path).close()
    with pytest.raises(StorageError, match="already exists"):
        _journal(tmp_path)


@pytest.mark.parametrize(
    ("run_id", "fingerprint", "problem"),
    [("run-b", "f1", "run 'run-a'"), ("run-a", "f2", "another fingerprint")],
)
def test_a_journal_of_another_run_is_refused(
    tmp_path: Path, run_id: str, fingerprint: str, problem: str
) -> None:
    _journal(tmp_path).close()
    with pytest.raises(StorageError, match="belongs to another run") as caught:
        CellJournal.open_existing(tmp_path, run_id=run_id, config_fingerprint=fingerprint)
    assert problem in str(caught.value)
    assert str(tmp_path / JOURNAL_FILE_NAME) in str(caught.value)


def test_a_file_that_is_not_a_journal_is_reported(tmp_path: Path) -> None:
    (tmp_path / JOURNAL_FILE_NAME).write_bytes(b"not a database at all" * 100)
    with pytest.raises(StorageError, match="not a readable cell journal"):
        CellJournal.open_existing(tmp_path, run_id="run-a", config_fingerprint="f1")


_CREATE_IN_READ_ONLY_DIRECTORY = """
import sys
from pathlib import Path
from sluiceway.errors import StorageError
from sluiceway.storage.journal import CellJournal
try:
    CellJournal.create(Path(sys.argv[1]), run_id="run-a", config_fingerprint="f1")
except StorageError as error:
    print(error)
    sys.exit(3)
"""


def _without_permission_override() -> None:
    """In the child before exec: root without these capabilities obeys permission bits."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_a_read_only_directory_fails_loudly_naming_the_journal(tmp_path: Path) -> None:
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        if os.geteuid() != 0:
            with pytest.raises(StorageError, match=JOURNAL_FILE_NAME):
                _journal(directory)
            return
        # Root ignores permission bits: create the journal in a subprocess that cannot.
        try:
            result = subprocess.run(
                [sys.executable, "-c", _CREATE_IN_READ_ONLY_DIRECTORY, str(directory)],
                preexec_fn=_without_permission_override,
                capture_output=True,
                timeout=60,
                check=False,
            )
        except subprocess.SubprocessError as exc:
            pytest.skip(f"cannot drop the permission override of root: {exc}")
        assert result.returncode == 3, result.stderr.decode()
        assert str(directory / JOURNAL_FILE_NAME) in " ".join(result.stdout.decode().split())
        assert list(directory.iterdir()) == []
    finally:
        directory.chmod(0o755)


def test_a_failed_commit_is_raised_by_the_next_record_and_by_close(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    journal.start()
    journal.record(0, "text", 0, "{}")
    journal.close()
    # A journal whose table is gone: the writer's next commit fails.
    broken = CellJournal.open_existing(tmp_path, run_id="run-a", config_fingerprint="f1")
    connection = sqlite3.connect(tmp_path / JOURNAL_FILE_NAME)
    connection.execute("DROP TABLE cells")
    connection.commit()
    connection.close()
    broken.start()
    broken.record(0, "text", 1, "{}")
    with pytest.raises(StorageError, match="could not write the cell journal"):
        broken.close()
    with pytest.raises(StorageError):
        broken.record(0, "text", 2, "{}")


def test_a_lone_surrogate_is_journaled_and_read_back(tmp_path: Path) -> None:
    # Valid in a Python string (and in a model's JSON answer), but with no UTF-8 form.
    journal = _journal(tmp_path)
    journal.start()
    journal.record(0, "text", 0, encode_payload({"text": "half \ud83d pair"}))
    journal.record(0, "text", 1, encode_payload({"text": "whole \U0001f30a"}))
    journal.close()
    again = CellJournal.open_existing(tmp_path, run_id="run-a", config_fingerprint="f1")
    entries = again.read_entries({0})[0]
    again.close()
    assert decode_payload(entries[("text", 0)]) == {"text": "half \ud83d pair"}
    assert decode_payload(entries[("text", 1)]) == {"text": "whole \U0001f30a"}


def test_a_batch_keeps_the_order_of_recording_so_the_later_entry_wins(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    for attempt in range(3):  # queued before the writer starts: one batch, one statement
        journal.record(2, "text", 7, encode_payload({"attempt": attempt}))
    journal.start()
    journal.close()
    again = CellJournal.open_existing(tmp_path, run_id="run-a", config_fingerprint="f1")
    entries = again.read_entries({2})
    again.close()
    assert decode_payload(entries[2][("text", 7)]) == {"attempt": 2}
    assert count_entries(tmp_path / JOURNAL_FILE_NAME) == 3


def test_any_failure_of_the_writer_is_reported_not_swallowed(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    journal.record(0, "text", 0, "{}")
    journal.record(0, "text", 1, object())  # type: ignore[arg-type]  # not text: cannot be written
    journal.start()
    with pytest.raises(StorageError, match="cell journal"):
        journal.close()


def test_remove_journal_deletes_the_side_files(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    journal.start()
    journal.record(0, "text", 0, "{}")
    journal.close()
    (tmp_path / (JOURNAL_FILE_NAME + "-wal")).write_bytes(b"")
    assert journal_files(tmp_path)
    remove_journal(tmp_path)
    assert journal_files(tmp_path) == []


def test_results_queued_together_are_committed_in_one_transaction(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    # Queued before the writer starts: its first commit takes them all.
    for row in range(200):
        journal.record(row // 20, "text", row, encode_payload({"text": f"t{row}"}))
    journal.forget_row_group(0)
    journal.start()
    journal.close()
    stats = journal.statistics()
    assert (stats.recorded, stats.committed, stats.batches) == (200, 200, 1)
    assert stats.forgotten_row_groups == 1
    assert count_entries(tmp_path / JOURNAL_FILE_NAME) == 180
