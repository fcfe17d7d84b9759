"""The sender's driver: a sender session against a connected socket, the clock and the
mapped file.

Like aioquic's ``transmit()``: hand the session what arrived, send what it returns, sleep
until its timer. Progress leaves through a callback; the CLI connects it to tqdm.
"""

from __future__ import annotations

import importlib
import os
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from udpxfer.errors import UsageError
from udpxfer.net.hashjobs import POLL_S, LateHashes
from udpxfer.net.source import MappedFile, SentPages, file_digests
from udpxfer.net.timing import PROGRESS_INTERVAL_S, Clock
from udpxfer.net.transport import UdpTransport
from udpxfer.protocol.sender import SenderSession
from udpxfer.protocol.sender_config import SenderConfig
from udpxfer.protocol.sender_data import DataRun
from udpxfer.protocol.wire import SHA256_BYTES, Mode
from udpxfer.units import Address

PRELOAD_BYTES = 128 << 20  # files from this size hash for longer than numpy takes to load
# Reliable files from this size are sent at once and hashed while they go (``hashjobs``);
# smaller ones hash first (a few hundredths of a second), which keeps their exchange simple.
HASH_WHILE_SENDING_BYTES = 64 << 20


def send_file(
    path: Path,
    to: Address,
    config: SenderConfig | None = None,
    *,
    on_progress: Callable[[SenderSession], None] | None = None,
    name: str | None = None,
    clock: Clock = time.monotonic,
    key: bytes | None = None,
    encrypt: bool = True,
) -> SenderSession:
    """Send one file to a receiver and return the finished session.

    Raises:
        UsageError: the file cannot be read or the address is bad.
        TransportError: the socket failed.
        KeyboardInterrupt: after telling the receiver that the transfer is cancelled.
    """
    if not path.is_file() and path.exists():
        raise UsageError(f"{path} is not a regular file")
    source = MappedFile(path)
    try:
        mtime_ns = os.stat(path).st_mtime_ns
        chunk_size = (config or SenderConfig()).chunk_size
        mode = (config or SenderConfig()).mode
        pages = SentPages(source, chunk_size)
        # The one-buffer runs need numpy (about 0.1 s to import): loaded beside the hash of
        # a file large enough to hide it, skipped for a small one (which would wait for it).
        preload = None
        if source.size >= PRELOAD_BYTES:
            preload = threading.Thread(
                target=importlib.import_module, args=("udpxfer.protocol.datarun",),
                name="udpxfer-preload",
            )  # fmt: skip
            preload.start()
        late: LateHashes | None = None
        manifest: tuple[bytes, ...]
        late_digest = mode is Mode.RELIABLE and source.size >= HASH_WHILE_SENDING_BYTES
        if late_digest:
            # Sent at once; the digest follows, the manifest only if the receiver asks.
            digest, manifest = bytes(SHA256_BYTES), ()
        else:
            digest, manifest = file_digests(source.data, chunk_size, done=source.drop)
        if preload is not None and not late_digest:
            preload.join()  # done by now: the hash took longer
        transport = UdpTransport.connect(to)
        try:
            session_id = secrets.randbits(64)
            keying = None
            if key is not None:
                from udpxfer.net.keyfile import new_nonce
                from udpxfer.protocol.sender_keying import SenderKeying

                keying = SenderKeying(key, session_id, new_nonce(), encrypt=encrypt)
            session = SenderSession(
                source.data,
                name=path.name if name is None else name,
                sha256=digest,
                session_id=session_id,
                now=clock(),
                config=config,
                mtime_ns=mtime_ns,
                keying=keying,
                manifest=manifest,
                manifest_later=late_digest,
            )
            if late_digest:
                late = LateHashes(source, chunk_size)
            if preload is not None and not preload.is_alive():
                session.build_runs_in_one_buffer()
                preload = None
            try:
                _run_sender(session, transport, clock, on_progress, pages, late, preload)
            except KeyboardInterrupt:
                # Caught here, around a call, as well as in the loop: CPython 3.11 can raise
                # it at a loop's back edge outside the try around the loop (python/cpython
                # #108214). Telling the receiver twice sends nothing more (abort is idempotent).
                session.abort("sender interrupted", clock())
                _send(transport, session.transmit(clock()))
                raise
            finally:
                session.release()
            if transport.refused:
                session.note_unreachable(to)
        finally:
            transport.close()
    finally:
        source.close()
    return session


def _run_sender(
    session: SenderSession,
    transport: UdpTransport,
    clock: Clock,
    on_progress: Callable[[SenderSession], None] | None,
    pages: SentPages,
    late: LateHashes | None = None,
    preload: threading.Thread | None = None,
) -> None:
    next_progress = 0.0
    batch: list[bytes | DataRun] = []
    try:
        while not session.finished:
            now = clock()
            batch = session.transmit(now)
            sent = bool(batch)
            if sent:
                _send(transport, batch, pages)  # empties it
                session.batch_left(clock())
            heard = False
            while (incoming := transport.recv_batch()) is not None:
                now = clock()
                for datagram in incoming[0]:
                    session.receive_datagram(datagram, now, incoming[2])
                heard = True
            if transport.refused:
                session.port_unreachable()  # ICMP: nothing listens there (yet)
            if on_progress is not None and now >= next_progress:
                on_progress(session)
                next_progress = now + PROGRESS_INTERVAL_S
            if late is not None:
                late.poll(session, now)
            if preload is not None and not preload.is_alive():
                session.build_runs_in_one_buffer()  # numpy is loaded: no wait here
                preload = None
            if sent or heard or session.finished:
                continue  # more may be ready to send now
            timer = session.get_timer()
            now = clock()
            if timer is not None and timer <= now:
                session.handle_timer(now)
                continue
            wait = None if timer is None else timer - now
            if late is not None and (late.pending or session.manifest_wanted):
                # A hash finishing in a worker wakes nothing: look often.
                wait = POLL_S if wait is None else min(wait, POLL_S)
            transport.wait(wait)
    except KeyboardInterrupt as exc:
        # Frames the interrupt cut short hold views of the mapped file (a run being sent):
        # let them go, so that the file can be unmapped.
        traceback.clear_frames(exc.__traceback__)
        unsent = [item for item in batch if isinstance(item, DataRun)]  # what did not leave
        batch = []
        session.abort("sender interrupted", clock(), unsent=unsent)
        unsent = []
        _send(transport, session.transmit(clock()))
        raise
    _send(transport, session.transmit(clock()))  # a final ABORT, if any
    while session.next_event() is not None:
        pass  # the outcome is kept on the session
    if on_progress is not None:
        on_progress(session)


def _send(
    transport: UdpTransport, items: list[bytes | DataRun], pages: SentPages | None = None
) -> None:
    """Send a session's output in order: control datagrams as they are, DATA runs gathered
    (then their pages may leave our resident set). What left is taken off ``items``, so an
    interrupted send leaves there what did not go out."""
    done = 0  # items[:done] have left
    try:
        plain: list[bytes] = []
        for index, item in enumerate(items):
            if isinstance(item, DataRun):
                if plain:
                    transport.send_many(plain)
                    plain = []
                    done = index
                transport.send_gathered(item.pieces, item.count, item.segment)
                done = index + 1
                if pages is not None:
                    pages.sent(item.first, item.count)
            else:
                plain.append(item)
        if plain:
            transport.send_many(plain)
        done = len(items)
    finally:
        del items[:done]
