"""Downloads the Tiny ImageNet zip over http(s): progress line, resume, sha256 check.

The official copy is http://cs231n.stanford.edu/tiny-imagenet-200.zip (~237 MB). Bytes go
to ``<dest_dir>/<name>.part``; an interrupted download (connection dropped, process killed)
resumes from there with an HTTP ``Range`` request, the next time or on an automatic retry.
The ``.part`` file is renamed to its final name only once complete (and, when ``sha256`` is
given, verified), so a finished-looking zip is always whole. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from plumbing.progress import Progress

DEFAULT_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_CHUNK = 1 << 20


class DownloadError(Exception):
    """A download failed for good or did not match its expected sha256."""


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: str, expected: str) -> None:
    """Raises DownloadError naming ``path`` when its sha256 is not ``expected``."""
    actual = file_sha256(path)
    if actual.lower() != expected.strip().lower():
        raise DownloadError(f"{path}: sha256 {actual} does not match the expected {expected}")


def _target_name(url: str) -> str:
    name = os.path.basename(urllib.parse.urlparse(url).path)
    return name or "tiny-imagenet-200.zip"


def _bar(total, enabled: bool) -> Progress:
    """The download's progress line, counted in MB (``total`` None when the length is
    unknown)."""
    return Progress(None if total is None else total / 1e6, unit="MB", count_unit="MB",
                    enabled=enabled, prefix="download ")


def _download_once(url: str, part: str, progress: bool, timeout: float) -> None:
    """One HTTP request, resuming ``part`` when it has bytes; raises on any failure."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "tinyimagenet-tfrecords"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # range past the end: the .part is bad; start over
            os.remove(part)
        raise
    with response:
        if have and response.status == 206:
            mode, done = "ab", have
        else:  # the server ignored Range (200): start over
            mode, done = "wb", 0
        length = response.headers.get("Content-Length")
        total = done + int(length) if length is not None else None
        bar, last = _bar(total, progress), 0.0
        with open(part, mode) as f:
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
                if time.monotonic() - last > 0.25:
                    last = time.monotonic()
                    bar.update(done / 1e6)
        bar.close(done / 1e6)
        if total is not None and done != total:
            raise DownloadError(f"{url}: connection closed after {done} of {total} bytes")


def fetch(url: str, dest_dir: str, *, sha256=None, progress: bool = True, retries: int = 3,
          timeout: float = 60.0) -> str:
    """Downloads ``url`` into ``dest_dir`` (reusing a complete earlier download) and returns
    the local path.

    Args:
      url: http(s) URL of the zip.
      dest_dir: folder for the zip and its ``.part`` file.
      sha256: expected hex digest; a mismatching download is deleted and refused.
      progress: draw a progress line on stderr.
      retries: further attempts, each resuming where the previous stopped.
      timeout: socket timeout per request, in seconds.

    Raises:
      DownloadError: naming the URL (or file) after all attempts failed or on a mismatch.
    """
    os.makedirs(dest_dir, exist_ok=True)
    path = os.path.join(dest_dir, _target_name(url))
    part = path + ".part"
    if os.path.exists(path):
        if sha256 is None:
            return path
        try:
            check_sha256(path, sha256)
            return path
        except DownloadError:
            os.remove(path)  # a stale or foreign file: fetch it again
    last_error = None
    for attempt in range(retries + 1):
        try:
            _download_once(url, part, progress, timeout)
            last_error = None
            break
        except (OSError, DownloadError, ValueError) as e:  # URLError, HTTPError, IncompleteRead
            last_error = e
            if progress:
                print(f"download: attempt {attempt + 1} failed: {e}", file=sys.stderr)
            if isinstance(e, urllib.error.HTTPError) and e.code in (401, 403, 404, 410):
                break
            time.sleep(min(0.2 * 2.0 ** attempt, 5.0))
    if last_error is not None:
        kept = (f"; the partial file {part} is resumed next time"
                if os.path.exists(part) and os.path.getsize(part) else "")
        raise DownloadError(f"{url}: download failed ({last_error}){kept}") from last_error
    if sha256 is not None:
        actual = file_sha256(part)
        if actual.lower() != sha256.strip().lower():
            os.remove(part)
            raise DownloadError(f"{url}: downloaded sha256 {actual} does not match the "
                                f"expected {sha256}; the download was deleted")
    os.replace(part, path)
    if progress:
        print(f"download: {path} complete (sha256 {sha256 or file_sha256(path)})",
              file=sys.stderr)
    return path
