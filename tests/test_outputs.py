"""The one policy for report and trace paths (udpxfer.reports.output), without a network."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from udpxfer.errors import TransportError, UsageError
from udpxfer.reports.output import STDOUT, check_target, is_stream, write_report, write_target

DOC = {"schema": "test", "value": 1}


def writer(data: bytes):  # type: ignore[no-untyped-def]
    return lambda handle: handle.write(data)


def test_a_new_path_gets_the_document_and_no_temporary_is_left(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "r.json"
    assert write_report(DOC, target) == target
    assert json.loads(target.read_text()) == DOC
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.json"]


def test_an_existing_file_is_never_replaced(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    target.write_text("earlier")
    first = write_report(DOC, target)
    second = write_report(DOC, target)
    assert (first.name, second.name) == ("r-1.json", "r-2.json")
    assert target.read_text() == "earlier"


def test_a_symlink_and_its_target_are_left_alone(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("precious")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere.json")
    assert write_report(DOC, link) == tmp_path / "link-1.json"
    assert write_report(DOC, dangling) == tmp_path / "dangling-1.json"
    assert link.is_symlink()
    assert os.readlink(link) == str(real)
    assert real.read_text() == "precious"
    assert dangling.is_symlink()
    assert not (tmp_path / "nowhere.json").exists()


def test_a_fifo_is_written_into_as_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "reports.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    errors: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    try:
        # The writer opens without blocking: wait (bounded) until the reader has opened.
        for _ in range(200):
            try:
                written = write_report(DOC, fifo)
            except TransportError as exc:
                errors.append(str(exc))
                reader.join(0.01)
            else:
                assert written == fifo
                break
        else:
            pytest.fail("the FIFO never had a reader")
    finally:
        reader.join(10)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got == [(json.dumps(DOC) + "\n").encode()]
    assert all("no process is reading the FIFO" in error for error in errors)


def test_a_fifo_without_a_reader_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "nobody.fifo"
    os.mkfifo(fifo)
    with pytest.raises(TransportError, match="no process is reading the FIFO"):
        write_target(fifo, writer(b"x"), what="report")


def test_stdout_takes_the_document_on_one_line(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert check_target("-", what="--report") == STDOUT
    assert is_stream(STDOUT)
    write_report(DOC, STDOUT)
    assert capsysbinary.readouterr().out == (json.dumps(DOC) + "\n").encode()


def test_checks_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="is a file, not a directory"):
        check_target(str(blocker / "r.json"), what="--report")
    with pytest.raises(UsageError, match="not possible here"):
        check_target("-", what="--trace", allow_stdout=False)
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(UsageError, match="not a regular file, a FIFO or a terminal"):
            check_target(str(sock_path), what="--report")
    assert check_target(str(tmp_path / "new" / "r.json"), what="--report").parent.is_dir()
    assert check_target(f"{tmp_path}/dir/", what="--report").is_dir()
    assert check_target(os.devnull, what="--report") == Path(os.devnull)
