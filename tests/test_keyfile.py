"""Keyed mode's I/O side: random keys, nonces and secrets, key files, and ``udpxfer keygen``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from udpxfer.errors import UsageError
from udpxfer.net.keyfile import (
    KEY_FILE_PREFIX,
    key_file_warning,
    load_key_file,
    new_key,
    new_nonce,
    new_secret,
    write_key_file,
)
from udpxfer.protocol.keys import KEY_BYTES, NONCE_BYTES

KEY = b"k" * KEY_BYTES
OTHER_KEY = b"o" * KEY_BYTES


# -- randomness --


def test_random_helpers_have_the_right_sizes_and_differ() -> None:
    assert len(new_key()) == KEY_BYTES
    assert len(new_nonce()) == NONCE_BYTES
    assert len(new_secret()) >= 16
    assert new_key() != new_key()
    assert new_nonce() != new_nonce()


# -- key files --


def assert_one_line_usage_error(path: Path, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        load_key_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert fragment in message
    assert str(path) in message


def test_key_file_round_trip_mode_0600_and_one_line(tmp_path: Path) -> None:
    path = tmp_path / "psk"
    key = new_key()
    old_umask = os.umask(0)
    try:
        write_key_file(path, key)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.startswith(KEY_FILE_PREFIX + " ")
    assert text.count("\n") == 1
    assert load_key_file(path) == key
    assert key_file_warning(path) is None


def test_key_file_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "psk"
    write_key_file(path, KEY)
    with pytest.raises(UsageError, match="exists"):
        write_key_file(path, OTHER_KEY)
    assert load_key_file(path) == KEY


def test_key_file_refuses_a_symlink_target(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    link = tmp_path / "psk"
    link.symlink_to(target)  # dangling: following it would create `elsewhere`
    with pytest.raises(UsageError, match="exists"):
        write_key_file(link, KEY)
    assert not target.exists()


def test_key_file_in_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot create"):
        write_key_file(tmp_path / "no" / "psk", KEY)


@pytest.mark.parametrize(
    ("contents", "fragment"),
    [
        (b"", "not a udpxfer key file"),
        (b"hello world\n", "not a udpxfer key file"),
        (b"\xff\xfe binary", "not a udpxfer key file"),
        (f"{KEY_FILE_PREFIX}\n".encode(), "not a udpxfer key file"),
        (f"{KEY_FILE_PREFIX} !!notbase64!!\n".encode(), "bad base64"),
        (f"{KEY_FILE_PREFIX} AAAA\n".encode(), "3 bytes, expected 32"),
        (f"{KEY_FILE_PREFIX} {'A' * 64}\n".encode(), "48 bytes, expected 32"),
        (b"x" * 10_000, "not a udpxfer key file"),
    ],
)
def test_bad_key_file_contents(tmp_path: Path, contents: bytes, fragment: str) -> None:
    path = tmp_path / "psk"
    path.write_bytes(contents)
    assert_one_line_usage_error(path, fragment)


def test_missing_directory_and_fifo_key_files(tmp_path: Path) -> None:
    assert_one_line_usage_error(tmp_path / "nope", "no such key file")
    assert_one_line_usage_error(tmp_path, "is a directory")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert_one_line_usage_error(fifo, "not a regular file")  # and does not hang


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_key_file(tmp_path: Path) -> None:
    path = tmp_path / "psk"
    write_key_file(path, KEY)
    path.chmod(0)
    assert_one_line_usage_error(path, "permission denied")


def test_warning_when_others_can_read_the_key(tmp_path: Path) -> None:
    path = tmp_path / "psk"
    write_key_file(path, KEY)
    path.chmod(0o644)
    warning = key_file_warning(path)
    assert warning is not None
    assert "0644" in warning
    assert "chmod 600" in warning
    assert "\n" not in warning
    path.chmod(0o640)
    assert key_file_warning(path) is not None
    assert key_file_warning(tmp_path / "missing") is None


# -- udpxfer keygen --


def keygen(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "udpxfer", "keygen", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_keygen_writes_a_key_then_refuses_to_overwrite_it(tmp_path: Path) -> None:
    first = keygen("lab.key", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "lab.key" in lines[0]
    assert "safe channel" in lines[0]
    assert "--key-file" in lines[0]
    assert "UDPXFER_KEY_FILE" in lines[0]
    key = load_key_file(tmp_path / "lab.key")
    assert stat.S_IMODE((tmp_path / "lab.key").stat().st_mode) == 0o600

    again = keygen("lab.key", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines() == [
        "udpxfer: error: lab.key: exists; refusing to overwrite it (choose a new path)"
    ]
    assert load_key_file(tmp_path / "lab.key") == key

    nowhere = keygen("missing/lab.key", cwd=tmp_path)
    assert nowhere.returncode == 2
    assert "Traceback" not in nowhere.stderr
    assert len(nowhere.stderr.strip().splitlines()) == 1
    assert "cannot create" in nowhere.stderr
