"""Names from the network, unique paths and ``.partial`` files, in a temporary directory."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import udpxfer.net.files
import udpxfer.net.hashing
from udpxfer.errors import TransportError, UsageError
from udpxfer.net.files import MAX_RUN_CHUNKS, PartialFile
from udpxfer.net.hashing import sha256_file
from udpxfer.paths import (
    MAX_NAME_BYTES,
    PARTIAL_SUFFIX,
    ensure_writable_dir,
    safe_name,
    unique_path,
)

SAFE_NAMES = [
    ("report.txt", "report.txt"),
    ("a/b/c.txt", "c.txt"),
    ("a\\b\\c.txt", "c.txt"),
    ("../../etc/passwd", "passwd"),
    ("..\\..\\boot.ini", "boot.ini"),
    ("/absolute/path.bin", "path.bin"),
    ("C:\\Users\\me\\x.txt", "x.txt"),
    ("mixed/sep\\name", "name"),
    ("..", "unnamed"),
    (".", "unnamed"),
    ("", "unnamed"),
    ("   ", "unnamed"),
    ("dir/", "unnamed"),
    ("dir\\", "unnamed"),
    ("a/..", "unnamed"),
    ("a\\.", "unnamed"),
    ("..\x00", "unnamed"),
    ("\u200b..", "unnamed"),  # a zero-width space does not save ``..``
    ("a\x00b.txt", "ab.txt"),
    ("\x00", "unnamed"),
    ("a\nb\tc\r.txt", "abc.txt"),
    ("bell\x07\x1b[31m.txt", "bell[31m.txt"),
    ("del\x7f.txt", "del.txt"),
    ("c1\x85\x9b.txt", "c1.txt"),
    ("evil\u202etxt.exe", "eviltxt.exe"),  # right-to-left override
    (".bashrc", "bashrc"),
    ("...hidden", "hidden"),
    ("  ..spaced.txt ", "spaced.txt"),
    ("file.bin.partial", "file.bin"),
    ("a/b.partial", "b"),
    (".partial", "partial"),
    ("naïve résumé.pdf", "naïve résumé.pdf"),
    ("日本語.txt", "日本語.txt"),
    ("a" * 200, "a" * 200),
]


@pytest.mark.parametrize(("name", "expected"), SAFE_NAMES)
def test_safe_name(name: str, expected: str) -> None:
    assert safe_name(name) == expected


# (name, expected length of the result in UTF-8 bytes, expected ending)
LONG_NAMES = [
    ("a" * 4096 + ".txt", 200, ".txt"),
    ("é" * 3000 + ".txt", 200, ".txt"),  # 2-byte characters, cut on a boundary
    ("€" * 2000 + ".txt", 199, ".txt"),  # 3-byte: 65 fit, the 66th is not split
    ("😀" * 1500 + ".tar.gz", 199, ".gz"),  # 4-byte
    ("a" * 300 + ".日本語", 200, ".日本語"),
    ("€" * 100, 198, "€"),  # no extension at all
    ("a" * 300 + "." + "b" * 17, 200, "a"),  # too long an extension is not kept
    ("x" * 199 + "€" + ".", 200, "."),  # an empty extension
]


@pytest.mark.parametrize(("name", "n_bytes", "ending"), LONG_NAMES)
def test_safe_name_cuts_long_names_on_character_boundaries(
    name: str, n_bytes: int, ending: str
) -> None:
    result = safe_name(name)
    assert len(result.encode("utf-8")) == n_bytes <= MAX_NAME_BYTES
    assert result.endswith(ending)
    stem = result.removesuffix(ending) if ending.startswith(".") else result
    assert name.startswith(stem)  # nothing but whole characters were dropped, at the end


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("x.partial", id="one suffix"),
        pytest.param("x.partial.partial", id="two suffixes"),
        pytest.param("x.partial .partial", id="suffix, space, suffix"),
        pytest.param("a" * 192 + ".partial" + ".extension-too-long", id="cut to a suffix"),
    ],
)
def test_safe_name_never_looks_like_a_partial_file(name: str) -> None:
    """README: a file is renamed from NAME.partial to NAME only once verified, so a
    finished file must not carry the suffix that marks an incomplete one."""
    assert not safe_name(name).endswith(PARTIAL_SUFFIX)


@given(st.text(st.characters(codec="utf-8"), max_size=600))
def test_safe_name_stays_a_plain_name_in_the_directory(name: str) -> None:
    result = safe_name(name)
    assert result
    assert result not in (".", "..")
    assert not result.startswith(".")
    assert "/" not in result
    assert "\\" not in result
    assert all(unicodedata.category(c)[0] != "C" for c in result)
    assert len(result.encode("utf-8")) <= MAX_NAME_BYTES
    directory = Path("/srv/out")
    assert (directory / result).parent == directory


def touch(path: Path, data: bytes = b"earlier") -> Path:
    path.write_bytes(data)
    return path


# (files already there, name, also_free, expected name)
UNIQUE_CASES = [
    ([], "a.txt", (), "a.txt"),
    (["a.txt"], "a.txt", (), "a-1.txt"),
    (["a.txt", "a-1.txt"], "a.txt", (), "a-2.txt"),
    (["a.txt", "a-2.txt"], "a.txt", (), "a-1.txt"),
    (["README"], "README", (), "README-1"),
    (["a.tar.gz"], "a.tar.gz", (), "a.tar-1.gz"),
    ([".hidden"], ".hidden", (), ".hidden-1"),
    (["a.txt.partial"], "a.txt", (".partial",), "a-1.txt"),
    (["a.txt.partial"], "a.txt", (), "a.txt"),
    (["a.txt", "a-1.txt.json"], "a.txt", (".partial", ".json"), "a-2.txt"),
]


@pytest.mark.parametrize(("existing", "name", "also_free", "expected"), UNIQUE_CASES)
def test_unique_path(
    tmp_path: Path, existing: list[str], name: str, also_free: tuple[str, ...], expected: str
) -> None:
    for other in existing:
        touch(tmp_path / other)
    assert unique_path(tmp_path, name, also_free=also_free) == tmp_path / expected


def test_unique_path_counts_an_existing_directory(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    assert unique_path(tmp_path, "out") == tmp_path / "out-1"


# --- PartialFile -----------------------------------------------------------------------------


def test_partial_file_is_created_at_its_size_and_committed(tmp_path: Path) -> None:
    partial = PartialFile(tmp_path, "../../data.bin", 1000)
    assert partial.final_path == tmp_path / "data.bin"
    assert partial.path == tmp_path / "data.bin.partial"
    assert partial.path.stat().st_size == 1000
    assert not partial.final_path.exists()
    partial.write_at(0, b"x" * 1000)
    final = partial.commit()
    assert final == tmp_path / "data.bin"
    assert final.read_bytes() == b"x" * 1000
    assert not partial.path.exists()
    assert sorted(os.listdir(tmp_path)) == ["data.bin"]


def test_partial_file_avoids_an_earlier_partial_and_final_file(tmp_path: Path) -> None:
    touch(tmp_path / "f.bin")
    touch(tmp_path / "f-1.bin.partial")
    partial = PartialFile(tmp_path, "f.bin", 10)
    assert partial.path == tmp_path / "f-2.bin.partial"
    partial.close()
    assert (tmp_path / "f.bin").read_bytes() == b"earlier"
    assert (tmp_path / "f-1.bin.partial").read_bytes() == b"earlier"


def test_partial_file_does_not_follow_a_symlink_to_a_file(tmp_path: Path) -> None:
    victim = touch(tmp_path / "victim", b"keep me")
    (tmp_path / "f.bin.partial").symlink_to(victim)
    partial = PartialFile(tmp_path, "f.bin", 100)
    partial.write_at(0, b"z" * 100)
    partial.commit()
    assert victim.read_bytes() == b"keep me"
    assert (tmp_path / "f.bin.partial").is_symlink()


def test_partial_file_neither_follows_nor_trips_over_a_dangling_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "created-through-the-link"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "f.bin.partial").symlink_to(target)
    try:
        partial = PartialFile(tmp_path, "f.bin", 100)
    finally:
        assert not target.exists()
    partial.close()
    # The link is an existing entry like any other: a fresh name, as for a regular file.
    assert partial.path == tmp_path / "f-1.bin.partial"


@pytest.mark.parametrize("planted", ["file", "symlink", "dangling symlink"])
def test_partial_file_creation_is_exclusive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted: str
) -> None:
    """Something appears at NAME.partial between choosing the name and creating the file."""
    victim = tmp_path / "victim"
    if planted == "file":
        touch(tmp_path / "f.bin.partial", b"keep me")
    elif planted == "symlink":
        touch(victim, b"keep me")
        (tmp_path / "f.bin.partial").symlink_to(victim)
    else:
        (tmp_path / "f.bin.partial").symlink_to(victim)
    monkeypatch.setattr(udpxfer.net.files, "unique_path", lambda d, n, also_free=(): d / n)
    with pytest.raises(TransportError, match=r"cannot create .*f\.bin\.partial"):
        PartialFile(tmp_path, "f.bin", 100)
    if planted == "file":
        assert (tmp_path / "f.bin.partial").read_bytes() == b"keep me"
    elif planted == "symlink":
        assert victim.read_bytes() == b"keep me"
    else:
        assert not victim.exists()


def chunks_of(data: bytes, size: int) -> list[tuple[int, bytes]]:
    return [(offset, data[offset : offset + size]) for offset in range(0, len(data), size)]


def fill(
    partial: PartialFile, pieces: Sequence[tuple[int, bytes | memoryview]], expected: bytearray
) -> None:
    for offset, piece in pieces:
        partial.write_at(offset, piece)
        expected[offset : offset + len(piece)] = piece


@pytest.mark.parametrize(
    "order", ["in order", "reversed", "shuffled", "every other", "scattered sizes"]
)
def test_partial_file_writes_land_at_their_offsets(tmp_path: Path, order: str) -> None:
    rng = random.Random(order)
    size = 100_000
    content = rng.randbytes(size)
    pieces = chunks_of(content, 1000)
    if order == "reversed":
        pieces.reverse()
    elif order == "shuffled":
        rng.shuffle(pieces)
    elif order == "every other":
        pieces = pieces[::2]
    elif order == "scattered sizes":
        pieces = []
        for _ in range(300):
            start = rng.randrange(size)
            pieces.append((start, content[start : start + rng.randint(0, 3000)]))
    expected = bytearray(size)  # unwritten stretches read as zeros
    partial = PartialFile(tmp_path, "f.bin", size)
    fill(partial, pieces, expected)
    assert partial.sha256() == hashlib.sha256(expected).digest()
    final = partial.commit()
    assert final.read_bytes() == expected


def test_partial_file_holes_read_as_zeros(tmp_path: Path) -> None:
    partial = PartialFile(tmp_path, "f.bin", 10_000)
    partial.write_at(0, b"head")
    partial.write_at(9_996, b"tail")
    partial.close()
    data = partial.path.read_bytes()
    assert data == b"head" + bytes(9_992) + b"tail"


def counting_pwritev(monkeypatch: pytest.MonkeyPatch, most: int | None = None) -> list[int]:
    """Record the buffer count of every pwritev; with ``most``, write at most that many bytes."""
    calls: list[int] = []
    real = os.pwritev

    def pwritev(fd: int, buffers: Sequence[Any], offset: int) -> int:
        calls.append(len(buffers))
        if most is None:
            return real(fd, buffers, offset)
        return os.pwrite(fd, b"".join(bytes(b) for b in buffers)[:most], offset)

    monkeypatch.setattr(os, "pwritev", pwritev)
    return calls


def test_partial_file_gathers_contiguous_chunks_in_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_pwritev(monkeypatch)
    n = 2 * MAX_RUN_CHUNKS + 100
    content = random.Random(1).randbytes(n * 7)
    partial = PartialFile(tmp_path, "f.bin", len(content))
    expected = bytearray(len(content))
    fill(partial, chunks_of(content, 7), expected)
    partial.flush()
    assert calls == [MAX_RUN_CHUNKS, MAX_RUN_CHUNKS, 100]
    partial.flush()  # nothing gathered: no system call
    assert len(calls) == 3
    assert partial.commit().read_bytes() == content


def test_partial_file_starts_a_new_run_at_a_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_pwritev(monkeypatch)
    partial = PartialFile(tmp_path, "f.bin", 100)
    for offset in (0, 10, 20, 50, 60, 30):
        partial.write_at(offset, b"x" * 10)
    partial.close()
    assert calls == [3, 2, 1]
    assert partial.path.read_bytes() == b"x" * 40 + bytes(10) + b"x" * 20 + bytes(30)


def test_partial_file_completes_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counting_pwritev(monkeypatch, most=5)
    content = bytes(range(256)) * 4
    partial = PartialFile(tmp_path, "f.bin", len(content))
    fill(partial, [*chunks_of(content, 13), (0, b"")], bytearray(len(content)))
    partial.close()
    assert partial.path.read_bytes() == content
    assert len(calls) >= len(content) // 5


def test_partial_file_writes_memoryviews_and_flushes_before_hashing(tmp_path: Path) -> None:
    buffer = bytearray(b"abcdefgh" * 100)
    partial = PartialFile(tmp_path, "f.bin", 1600)
    partial.write_at(800, memoryview(buffer)[:800])
    assert partial.sha256() == hashlib.sha256(bytes(800) + bytes(buffer)).digest()
    buffer[:] = bytes(800)  # flushed already: the receive buffer may be reused
    partial.close()
    assert partial.path.read_bytes()[800:] == b"abcdefgh" * 100


def test_partial_file_hashes_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(udpxfer.net.hashing, "HASH_BLOCK_BYTES", 1000)
    content = random.Random(2).randbytes(4567)
    partial = PartialFile(tmp_path, "f.bin", len(content))
    fill(partial, chunks_of(content, 500), bytearray(len(content)))
    assert partial.sha256() == hashlib.sha256(content).digest()
    partial.close()


def test_empty_partial_file(tmp_path: Path) -> None:
    partial = PartialFile(tmp_path, "empty", 0)
    assert partial.sha256() == hashlib.sha256(b"").digest()
    assert partial.commit().read_bytes() == b""


def test_close_leaves_the_partial_file(tmp_path: Path) -> None:
    partial = PartialFile(tmp_path, "f.bin", 10)
    partial.write_at(0, b"0123456789")
    partial.close()
    partial.close()  # twice is harmless
    assert partial.closed
    assert partial.path.read_bytes() == b"0123456789"
    assert not partial.final_path.exists()
    assert partial.commit().read_bytes() == b"0123456789"  # still committable


def test_commit_picks_a_fresh_name_if_the_final_one_appeared(tmp_path: Path) -> None:
    partial = PartialFile(tmp_path, "f.bin", 3)
    partial.write_at(0, b"new")
    touch(tmp_path / "f.bin", b"meanwhile")
    final = partial.commit()
    assert final == tmp_path / "f-1.bin"
    assert final.read_bytes() == b"new"
    assert (tmp_path / "f.bin").read_bytes() == b"meanwhile"
    assert not partial.path.exists()


def test_partial_file_in_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match="cannot create"):
        PartialFile(tmp_path / "missing", "f.bin", 10)


@pytest.mark.parametrize("why", ["file too large", "no room"])
def test_partial_file_without_room_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    size = 1 << 62
    if why == "no room":
        size = 1 << 20
        real = os.fstatvfs

        def full(fd: int) -> Any:
            stats = real(fd)
            return os.statvfs_result((*stats[:4], 10, *stats[5:]))  # f_bavail: 10 blocks

        monkeypatch.setattr(os, "fstatvfs", full)
    with pytest.raises(TransportError, match=r"cannot make room for .*f\.bin\.partial"):
        PartialFile(tmp_path, "f.bin", size)
    assert os.listdir(tmp_path) == []


def test_partial_file_reports_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(fd: int, buffers: Sequence[Any], offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    partial = PartialFile(tmp_path, "f.bin", 10)
    monkeypatch.setattr(os, "pwritev", disk_full)
    partial.write_at(0, b"x")
    with pytest.raises(TransportError, match=r"cannot write .*f\.bin\.partial: No space left"):
        partial.flush()
    partial.close()  # the failed run is gone: closing does not raise again


# --- ensure_writable_dir and sha256_file ---------------------------------------------------


def test_ensure_writable_dir_creates_nested_directories(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    assert ensure_writable_dir(target) == target
    assert target.is_dir()
    assert ensure_writable_dir(target) == target  # already there


def one_line_usage_error(call: Callable[[], object], *fragments: str) -> None:
    with pytest.raises(UsageError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    cause = caught.value.__cause__
    assert cause is None or isinstance(cause, OSError)  # the system's refusal, kept as the cause


def test_ensure_writable_dir_on_a_file(tmp_path: Path) -> None:
    target = touch(tmp_path / "file")
    one_line_usage_error(lambda: ensure_writable_dir(target), str(target))


def test_ensure_writable_dir_below_a_file(tmp_path: Path) -> None:
    target = touch(tmp_path / "file") / "sub"
    one_line_usage_error(
        lambda: ensure_writable_dir(target), f"{target.parent} is a file, not a directory"
    )


def test_ensure_writable_dir_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # root may write anywhere
    one_line_usage_error(lambda: ensure_writable_dir(tmp_path), f"{tmp_path} is not writable")


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 4567])
def test_sha256_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setattr(udpxfer.net.hashing, "HASH_BLOCK_BYTES", 1000)
    content = random.Random(size).randbytes(size)
    assert sha256_file(touch(tmp_path / "f", content)) == hashlib.sha256(content).digest()


def test_sha256_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    one_line_usage_error(lambda: sha256_file(missing), f"cannot read {missing}")
    one_line_usage_error(lambda: sha256_file(tmp_path), f"cannot read {tmp_path}")


def test_prefix_hasher_matches_a_hash_of_the_whole_file(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(3 * (1 << 22) + 12345)  # spans several hash blocks
    partial = PartialFile(tmp_path, "big.bin", len(data))
    step = 1400
    for offset in range(0, len(data), step):
        partial.write_at(offset, data[offset : offset + step])
        if offset % (step * 500) == 0:
            partial.flush()
            partial.final_prefix(offset)  # what is flushed before ``offset`` is final
    assert partial.sha256() == hashlib.sha256(data).digest()
    assert partial.sha256() == hashlib.sha256(data).digest()  # asking again is harmless
    partial.close()


def test_prefix_hasher_stops_when_the_file_closes(tmp_path: Path) -> None:
    partial = PartialFile(tmp_path, "f.bin", 10_000)
    partial.final_prefix(5_000)
    partial.close()  # the worker ends; nothing hangs
    assert partial.closed


def test_write_run_gathers_more_pieces_than_one_system_call_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs longer than IOV_MAX go out in several calls; short writes go on where they
    stopped; a run that does not continue the gathered one starts a new write."""
    data = random.Random(7).randbytes(1300 * 10)
    pieces = [data[i : i + 10] for i in range(0, len(data), 10)]  # 1300 pieces
    real = os.pwritev
    calls: list[int] = []

    def short_pwritev(fd: int, buffers: Sequence[Any], offset: int) -> int:
        calls.append(len(buffers))
        return real(fd, buffers, offset) if len(calls) % 2 else real(fd, buffers[:1], offset)

    monkeypatch.setattr(udpxfer.net.files.os, "pwritev", short_pwritev)
    partial = PartialFile(tmp_path, "f.bin", len(data) + 100)
    partial.write_run(0, pieces[:700], 7000)
    partial.write_run(7000, pieces[700:], len(data) - 7000)
    partial.write_run(len(data), [b"t" * 100], 100)
    partial.close()
    assert (tmp_path / "f.bin.partial").read_bytes() == data + b"t" * 100
    assert max(calls) <= udpxfer.net.files.MAX_RUN_CHUNKS


@pytest.mark.parametrize("size", [1, 7, 8, 999, 1000, 1001, 8 * 37 * 3 + 5])
@pytest.mark.parametrize("block_chunks", [1, 3, 37])
def test_blocks_held_from_packed_bits_equals_the_byte_per_chunk_way(
    size: int, block_chunks: int
) -> None:
    """The resume sidecar's blocks, worked out a stretch of the packed bitmap at a time."""
    import numpy as np

    from udpxfer.net.resume import blocks_held, blocks_on_disk
    from udpxfer.protocol.ranges import Bitmap

    rng = random.Random(size * 100 + block_chunks)
    bitmap = Bitmap(size)
    for index in range(size):
        if rng.random() < 0.97:
            bitmap.set(index)
    flags = bitmap.flags()
    for stretch in (8, 64, 1 << 20):
        assert blocks_held(bitmap, block_chunks, stretch) == blocks_on_disk(flags, block_chunks)
    assert np.array_equal(flags, bitmap.flags())  # read only


def test_a_sidecar_names_the_same_source_with_a_digest_known_on_one_side_only(
    tmp_path: Path,
) -> None:
    """A large file's digest follows its first META: a sidecar written before it came (zeros)
    and a META that has it are the same source; two different known digests are not."""
    from udpxfer.net.resume import SourceIdentity, read_state, write_state

    def identity(sha: str, mtime_ns: int = 5) -> SourceIdentity:
        return SourceIdentity("f.bin", 3000, sha, mtime_ns, 1000, 1)

    partial = tmp_path / "f.bin.partial"
    partial.write_bytes(bytes(3000))
    unknown, known, other = "0" * 64, "ab" * 32, "cd" * 32
    with partial.open("rb") as handle:
        write_state(partial, identity(unknown), b"\x05", handle.fileno())
    assert read_state(partial, identity(known)) == b"\x05"
    assert read_state(partial, identity(unknown)) == b"\x05"
    assert read_state(partial, identity(known, mtime_ns=6)) is None  # another version
    with partial.open("rb") as handle:
        write_state(partial, identity(known), b"\x07", handle.fileno())
    assert read_state(partial, identity(unknown)) == b"\x07"
    assert read_state(partial, identity(other)) is None  # two digests, two versions
    assert identity(known).same_source(identity(unknown))
    assert not identity(known).same_source(identity(other))
