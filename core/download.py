"""Downloads that resume, retry and verify (``robustad-bench data download``).

An archive streams to ``<name>.part`` beside its final path, with a progress bar (bytes and
rate). A ``.part`` left by a killed or dropped download resumes with an HTTP ``Range``
request; a server that ignores it sends the whole file again, which replaces the part.
Transient failures (connection reset or refused, a timeout, HTTP 5xx or 429, a body cut
short) are retried ``retries`` times with exponential backoff; anything else (404, 403, a
bad URL) fails at once. The finished file is checked against its published digest
(``sha256:…`` or ``md5:…``) before it takes its final name: a mismatch deletes it and names
both digests. A final file whose digest matches is reused without a request.
"""

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import file_digests

CHUNK = 1 << 16
BACKOFF_SECONDS = 1.0  # the first retry waits this long, each next one twice as long
TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}
USER_AGENT = "robustad-bench (data download)"


class TransientError(Exception):
    """A failure worth another try (the connection, not the request, went wrong)."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    digest: str  # "sha256:<hex>" of the file as fetched (what a first fetch without a published digest records)
    reused: bool  # the final file was there already with the right digest: nothing was requested
    resumed_from: int  # bytes a ``Range`` request continued from (0: from the start)


def parse_checksum(checksum: str) -> tuple[str, str]:
    """``"sha256:<hex>"`` or ``"md5:<hex>"`` → (algorithm, lowercase hex); ``""`` → ("", "")."""
    if not checksum:
        return "", ""
    kind, sep, value = checksum.partition(":")
    digest_size = {"sha256": 64, "md5": 32}.get(kind.lower())
    value = value.strip().lower()
    if not sep or digest_size is None or len(value) != digest_size or any(c not in "0123456789abcdef" for c in value):
        raise UserError(f"a checksum is sha256:<64 hex digits> or md5:<32 hex digits>, got {checksum!r}", key="--sha256")
    return kind.lower(), value


def digests(path: Path, kind: str) -> tuple[str, str]:
    """(the ``kind`` digest, or "" without one; the sha256), in one read of the file."""
    found = file_digests(path, tuple({kind, "sha256"} - {""}))
    return found.get(kind, ""), found["sha256"]


def fetch(url: str, dest: Path, checksum: str = "", *, retries: int = 3, timeout: float = 30.0,
          progress: bool = True) -> Fetched:
    """``url`` into ``dest`` (its folder is created), verified against ``checksum``."""
    kind, expected = parse_checksum(checksum)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        actual, sha256 = digests(dest, kind)
        if actual == expected:
            return Fetched(dest, "sha256:" + sha256, True, 0)
    part = dest.with_name(dest.name + ".part")
    resumed_from = part.stat().st_size if part.is_file() else 0
    for attempt in range(retries + 1):
        try:
            stream(url, part, timeout=timeout, progress=progress)
            break
        except TransientError as err:
            if attempt == retries:
                raise UserError(f"{url}: {err}; gave up after {retries + 1} attempt(s) (the partial file {str(part)!r} "
                                "is kept: the next run resumes it)", key="--url") from err
            time.sleep(BACKOFF_SECONDS * 2**attempt)
    actual, sha256 = digests(part, kind)
    if actual != expected:
        part.unlink()
        raise UserError(f"{url}: {kind} mismatch: expected {expected}, got {actual} (the download was deleted; "
                        "a changed mirror or a corrupted transfer — check the URL, or give the right --sha256)", key="--sha256")
    part.replace(dest)
    return Fetched(dest, "sha256:" + sha256, False, resumed_from)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the redirect itself carries the metadata; its target (a CDN) does not


def published_sha256(url: str, timeout: float = 10.0) -> str | None:
    """The sha256 the host publishes for ``url`` without sending the file: the Hugging Face hub
    answers a HEAD with the LFS object id (``X-Linked-Etag``, the content's sha256) before it
    redirects to its CDN. None when the host says nothing of the kind or cannot be reached."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.build_opener(NoRedirect).open(request, timeout=timeout)
        headers = response.headers
        response.close()
    except urllib.error.HTTPError as err:  # the unfollowed redirect
        headers = err.headers
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return None
    etag = (headers.get("X-Linked-Etag") or "").strip().strip('"').lower() if headers is not None else ""
    return etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None


def stream(url: str, part: Path, *, timeout: float, progress: bool) -> None:
    """One request: continue ``part`` from its size (``Range``), or write it from the start."""
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": USER_AGENT} | ({"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing after what we have: the part is whole (its digest decides)
            return
        if err.code in TRANSIENT_HTTP:
            raise TransientError(f"HTTP {err.code} {err.reason}") from err
        raise UserError(f"{url}: HTTP {err.code} {err.reason} (not retried)", key="--url") from err
    except urllib.error.URLError as err:
        if isinstance(err.reason, socket.gaierror):  # no such host, or no network at all: another try will not help
            raise UserError(f"{url}: cannot resolve the host ({err.reason}); offline? give a reachable mirror with --url",
                            key="--url") from err
        if isinstance(err.reason, OSError):  # refused, reset, timed out
            raise TransientError(f"cannot connect ({err.reason})") from err
        raise UserError(f"{url}: {err.reason}", key="--url") from err
    except (ConnectionError, TimeoutError, http.client.HTTPException) as err:
        raise TransientError(f"the connection failed ({err or type(err).__name__})") from err
    with response:
        resumed = response.status == 206
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        start = have if resumed else 0
        received = 0
        bar = progress_bar(part.name.removesuffix(".part"), start + expected if expected is not None else None, start, progress)
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while chunk := read_chunk(response):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
        if expected is not None and received < expected:
            raise TransientError(f"the body ended after {start + received} of {start + expected} bytes")


def read_chunk(response) -> bytes:
    try:
        return response.read(CHUNK)
    except (ConnectionError, TimeoutError, http.client.HTTPException) as err:
        raise TransientError(f"the connection dropped ({err or type(err).__name__})") from err


def progress_bar(name: str, total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                disable=not enabled, leave=False)
