"""The sample files of sample_files/, made deterministically (the same bytes on every run).

    python -m udpxfer.lab.samples [DIR]     # rewrite them (default: sample_files/)

photo.jpg is a synthetic photo-like landscape (sky gradient, sun, hills, grain) saved with a
restart marker after every row of blocks, so a JPEG decoder resynchronises after a hole: the
classic demonstration that JPEG survives some loss. Needs Pillow (matplotlib depends on it).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_files"
WIDTH, HEIGHT = 1024, 768


def landscape(seed: int = 7) -> Image.Image:
    """A photo-like landscape: sky gradient, sun, three ridges of hills, film grain."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    t = y / HEIGHT
    sky = np.stack([90 + 120 * t, 150 + 80 * t, 235 - 30 * t], axis=-1)
    sun = np.exp(-(((x - 760) ** 2 + (y - 190) ** 2) / (2 * 55.0**2)))[..., None]
    img = sky * (1 - sun) + np.array([255, 236, 170]) * sun
    for k, (base, amp, colour) in enumerate(
        [(470, 60, (70, 120, 80)), (540, 45, (50, 95, 60)), (620, 30, (35, 70, 45))]
    ):
        phase = rng.uniform(0, 2 * np.pi, 3)
        ridge = base + amp * (
            np.sin(x[0] / (170 + 40 * k) + phase[0])
            + 0.5 * np.sin(x[0] / (61 + 9 * k) + phase[1])
            + 0.25 * np.sin(x[0] / (23 + 3 * k) + phase[2])
        )
        below = y >= ridge[None, :]
        shade = 1 - 0.35 * np.clip((y - ridge[None, :]) / 200, 0, 1)
        img = np.where(below[..., None], np.array(colour) * shade[..., None], img)
    img = img + rng.normal(0, 6, img.shape)  # film grain: makes it compress like a photo
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def text() -> str:
    paragraphs = [
        "UDP gives each datagram one chance. Nothing in the protocol notices a loss, "
        "repairs it, or keeps order: that is the application's business, and the reason "
        "udpxfer exists.",
        "A sender cuts the file into chunks, puts a header with a sequence number, a send "
        "time and a checksum on each, and streams them. The receiver writes every chunk at "
        "its offset, remembers which ones arrived, and in the end compares the SHA-256 of "
        "what it holds with the one the sender announced.",
        "In blast mode nothing is sent twice, and the report tells exactly which chunks never "
        "arrived. In reliable mode the receiver asks for the missing ranges until the file "
        "is whole.",
    ]
    lines = []
    for i in range(60):
        lines.append(f"{i + 1:3d}. " + paragraphs[i % len(paragraphs)])
    return "\n\n".join(lines) + "\n"


def write_photo(path: Path) -> Path:
    """Write the sample photo (a JPEG with a restart marker after every row of blocks)."""
    landscape().save(path, quality=85, restart_marker_rows=1)
    return path


def write_samples(directory: Path) -> list[Path]:
    """Write every sample file into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "notes.txt").write_text(text(), encoding="utf-8")
    (directory / "random.bin").write_bytes(random.Random(2026).randbytes(96 * 1024))
    write_photo(directory / "photo.jpg")
    return sorted(directory.iterdir())


if __name__ == "__main__":
    import sys

    for written in write_samples(Path(sys.argv[1]) if len(sys.argv) > 1 else SAMPLE_DIR):
        print(f"{written.name:12} {written.stat().st_size:8d} bytes")
