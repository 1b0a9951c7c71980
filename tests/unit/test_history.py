"""The agent's instance history (sidecar.history): records survive a restart
of the agent, kept output stays within its bounds; and the process driver's
logs read a long output's tail without reading it whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.drivers.process import ProcessDriver
from sidecar.history import Ended, History, Record, last_lines


def lines(count: int, start: int = 0) -> list[bytes]:
    return [f"line-{n:03d}\n".encode() for n in range(start, start + count)]


TENS = [f"line-{n:04d}\n".encode() for n in range(20)]


def test_a_record_survives_a_new_history_on_the_same_dir(tmp_path: Path) -> None:
    record = Record(2, Ended("exited", "exited with code 0", 0, 1, 1700000000.0))
    History(tmp_path).put("web-1", record)
    assert History(tmp_path).get("web-1") == record
    assert History(tmp_path).get("web-2") == Record()


@pytest.mark.parametrize("damage", [b"", b"{", b"[1]", b'{"ended": {"state": 1}}'],
                         ids=["empty", "cut", "not-an-object", "wrong-fields"])
def test_a_damaged_record_reads_as_no_history(tmp_path: Path, damage: bytes) -> None:
    (tmp_path / "web-1.json").write_bytes(damage)
    assert History(tmp_path).get("web-1") == Record()


@pytest.mark.parametrize(("chunks", "kept"), [
    (lines(3), b"".join(lines(3))),
    # 50 lines of 9 bytes: the last whole lines that fit in 100 bytes.
    (lines(50), b"".join(lines(11, start=39))),
    # One chunk, as a runtime may send it.
    ([b"".join(lines(50))], b"".join(lines(11, start=39))),
    # 20 lines of 10 bytes: the bound starts on a line's start.
    (TENS, b"".join(TENS[-10:])),
    ([b"x" * 300 + b"\n"], b"x" * 99 + b"\n"),
    ([], b""),
], ids=["short-whole", "long-last-lines", "one-big-chunk", "cut-at-a-line-end",
        "one-long-line", "no-output"])
def test_kept_output_is_the_last_whole_lines_within_the_bound(
        tmp_path: Path, chunks: list[bytes], kept: bytes) -> None:
    history = History(tmp_path, output_bytes=100)
    history.keep_output("web-1", iter(chunks))
    assert history.output("web-1") == kept


def test_at_most_so_many_outputs_are_kept_the_oldest_go_first(tmp_path: Path) -> None:
    history = History(tmp_path, kept_outputs=3)
    for age, instance in enumerate(["a", "b", "c", "d"]):
        history.put(instance, Record(1))
        history.keep_output(instance, iter([instance.encode()]))
        os.utime(tmp_path / f"{instance}.log", (1000 + age, 1000 + age))
    assert [history.output(i) for i in "abcd"] == [None, b"b", b"c", b"d"]
    assert all(history.get(i) == Record(1) for i in "abcd")  # records are not outputs


def test_forgetting(tmp_path: Path) -> None:
    history = History(tmp_path)
    for instance in ["a", "b", "c"]:
        history.put(instance, Record(1))
        history.keep_output(instance, iter([b"out\n"]))
    history.forget("a")
    history.keep_only({"b"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "b.log"]
    history.drop_output("b")
    assert history.output("b") is None and history.get("b") == Record(1)


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "."], ids=["empty", "up", "slash", "dot"])
def test_an_id_is_never_a_path(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="not an instance id"):
        History(tmp_path).get(bad)


@pytest.mark.parametrize(("data", "count", "expected"), [
    (b"a\nb\nc\n", 2, b"b\nc\n"),
    (b"a\nb\nc", 2, b"b\nc"),
    (b"a\nb\n", 0, b"a\nb\n"),
    (b"a\nb\n", 5, b"a\nb\n"),
], ids=["last-two", "no-final-newline", "zero-is-all", "more-than-there-are"])
def test_last_lines(data: bytes, count: int, expected: bytes) -> None:
    assert last_lines(data, count) == expected


@pytest.mark.parametrize(("count", "tail"), [
    (200_000, 3), (200_000, 20_000), (5, 10), (5, None),
], ids=["few-of-many", "many-of-many", "more-than-there-are", "all"])
def test_process_logs_tail_a_long_output(tmp_path: Path, count: int, tail: int | None) -> None:
    driver = ProcessDriver("n1", "127.0.0.1", tmp_path)
    home = driver.root / "web-1"
    home.mkdir()
    everything = [f"line {n}\n".encode() for n in range(count)]
    (home / "output.log").write_bytes(b"".join(everything))
    assert list(driver.logs("web-1", tail)) == (everything[-tail:] if tail else everything)
