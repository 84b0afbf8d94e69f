"""Uploaded captures: a multipart body read within a size limit, each file saved under the
upload directory and checked to be a capture before any job is queued.

Each upload batch gets a directory of its own (a random name: nothing from the client reaches a
path), the files are saved as ``NN.pcap`` with their SHA-256 computed on the way, and each is
opened with the capture reader, which checks the pcap/pcapng/gzip magic: a file that is not a
capture is refused (and the batch removed) before a job exists. RFC 7578 (multipart/form-data);
draft-ietf-opsawg-pcap section 4, draft-ietf-opsawg-pcapng section 4.1 (magic numbers).
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from analyzer.pcapfile import CaptureReader, NotACaptureError
from analyzer.storage import InputSpec

# Captures per job: a case is a handful of captures (one per SBC or per hour); more is a
# scripted misuse better served by several jobs.
MAX_FILES = 32
# Non-file form fields (``at``) and their size: short text only.
MAX_FIELDS = 8
MAX_FIELD_BYTES = 1024
# The form field carrying the captures.
FILE_FIELD = "capture"
# Copy block size when saving an upload (the spooled temporary file is read in these).
COPY_BLOCK = 1 << 20
# Longest upload file name kept (for display and the manifest; never used as a path).
MAX_NAME = 255


class UploadError(Exception):
    """The request is not an acceptable upload; ``kind`` says which error it is."""

    def __init__(self, kind: str, *detail: str) -> None:
        super().__init__(f"{kind}: {', '.join(detail)}")
        self.kind = kind
        self.detail = detail


# UploadError kinds (service.api.jobs maps them to error codes).
TOO_LARGE = "too_large"
NOT_MULTIPART = "not_multipart"
MALFORMED = "malformed"
NO_FILES = "no_files"
NOT_A_CAPTURE = "not_a_capture"


@dataclass(frozen=True, slots=True)
class SavedBatch:
    """Captures saved for one job: its directory name (under the upload directory) and the
    job inputs with their ``location``."""

    name: str
    inputs: tuple[InputSpec, ...]

    @property
    def total_bytes(self) -> int:
        return sum(i.size or 0 for i in self.inputs)


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise UploadError(TOO_LARGE, str(limit))
        yield chunk


async def read_form(request: Request, limit: int) -> FormData:
    """The multipart form of ``request``, refusing a body over ``limit`` bytes (by its
    Content-Length at once, else as it streams). File parts are spooled to temporary files."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        raise UploadError(NOT_MULTIPART, request.headers.get("content-type", "") or "(none)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadError(TOO_LARGE, str(limit))
    parser = MultiPartParser(
        request.headers,
        _limited(request.stream(), limit),
        max_files=MAX_FILES,
        max_fields=MAX_FIELDS,
        max_part_size=MAX_FIELD_BYTES,
    )
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise UploadError(MALFORMED, str(exc.message)) from None


def form_files(form: FormData) -> list[UploadFile]:
    """The uploaded captures of a form (at least one, each a file)."""
    items = form.getlist(FILE_FIELD)
    files = [i for i in items if isinstance(i, UploadFile)]
    if len(files) != len(items):
        raise UploadError(MALFORMED, f"{FILE_FIELD} must be a file")
    if not files:
        raise UploadError(NO_FILES, FILE_FIELD)
    return files


def form_text(form: FormData, name: str) -> str | None:
    """A text field of the form (None when absent or empty)."""
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise UploadError(MALFORMED, f"{name} must be text")
    return value.strip() or None


def _display_name(name: str | None, position: int) -> str:
    text = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(c for c in text if c.isprintable())[:MAX_NAME]
    return text or f"capture-{position + 1}"


def _save(source: BinaryIO, target: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with target.open("xb") as out:
        while block := source.read(COPY_BLOCK):
            digest.update(block)
            out.write(block)
            size += len(block)
    return size, digest.hexdigest()


def _check_capture(path: Path, name: str) -> None:
    try:
        CaptureReader(path).close()
    except NotACaptureError as exc:
        raise UploadError(NOT_A_CAPTURE, name, str(exc)) from None


def save_batch(files: Sequence[UploadFile], upload_dir: Path) -> SavedBatch:
    """Save ``files`` in a new directory under ``upload_dir`` and check each is a capture;
    on any error nothing is left behind. Blocking: run it in a thread."""
    name = uuid.uuid4().hex
    directory = upload_dir / name
    directory.mkdir(parents=True, mode=0o700)
    try:
        inputs = []
        for position, upload in enumerate(files):
            display = _display_name(upload.filename, position)
            target = directory / f"{position:02d}.pcap"
            upload.file.seek(0)
            size, sha256 = _save(upload.file, target)
            _check_capture(target, display)
            inputs.append(InputSpec(display, size, sha256, str(target)))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return SavedBatch(name, tuple(inputs))


def discard_batch(batch: SavedBatch, upload_dir: Path) -> None:
    """Remove a saved batch (its job could not be created)."""
    shutil.rmtree(upload_dir / batch.name, ignore_errors=True)
