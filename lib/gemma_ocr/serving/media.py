"""Which images a request may name, and reading them.

By default only ``data:image/...;base64,`` URLs are read: a server started with ``--host 0.0.0.0`` would
otherwise let anyone who reaches its port read the machine's images or make it fetch internal URLs. Two
flags, named as vLLM names them, allow more:

* ``--allowed-local-media-path DIR``: file paths and ``file://`` URLs of files under DIR (resolved, symlinks
  followed: a link out of DIR is refused);
* ``--allowed-media-domains HOST ...``: ``http(s)://`` URLs of those hosts (no redirects elsewhere).

An image that is refused or cannot be read is the request's own error (:class:`RequestError`, HTTP 400). What the
processor gets is a string it decodes itself, as for any chat (its image decoder, straight to a tensor): a data
URL (checked here, decoded there), a file's resolved path, or the data URL of a fetched image's bytes. An image
that does not decode fails its own request there (:class:`~gemma_ocr.serving.generation.PromptError`, HTTP 400).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests
from PIL import Image, UnidentifiedImageError

from gemma_ocr.data.images import MAX_IMAGE_PIXELS  # a decoder asked for more would take the server's memory
from gemma_ocr.serving.openai_api import ImagePart, RequestError


MAX_FETCHED_BYTES = 64 << 20  # an image fetched over HTTP
FETCH_TIMEOUT = 10.0  # seconds


@dataclass(frozen=True)
class MediaPolicy:
    """Where images other than data URLs may come from (nowhere by default)."""

    local_root: Path | None = None  # resolved
    domains: frozenset[str] = field(default_factory=frozenset)  # lower-case host names

    @classmethod
    def from_flags(cls, local_path: str | os.PathLike[str] | None, domains: list[str] | None) -> MediaPolicy:
        root = Path(local_path).expanduser().resolve() if local_path else None
        return cls(root, frozenset(d.strip().lower() for d in domains or () if d.strip()))

    def reads_files(self) -> bool:
        return self.local_root is not None


def needs_io(url: str) -> bool:
    """Whether reading ``url`` waits on a file or the network (a data URL does not)."""
    return not url.startswith("data:")


def image_source(part: ImagePart, policy: MediaPolicy) -> str:
    """What the processor reads for ``part``: a checked data URL, a file's resolved path, or a fetched image as a
    data URL; a :class:`RequestError` when the image is refused or cannot be read."""
    url = part.url
    if url.startswith("data:"):
        return checked_data_url(url, part.param)
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        data = fetch(url, part.param, policy)
        check_image_header(data, part.param)
        return "data:image/unknown;base64," + base64.b64encode(data).decode("ascii")
    if scheme in ("", "file"):
        return str(local_file(url, part.param, policy))
    raise RequestError(f"image URL scheme {scheme!r} is not supported: send a data:image/...;base64, URL", part.param)


def checked_data_url(url: str, param: str) -> str:
    """A ``data:image/<type>;base64,<data>`` URL as the processor reads it (its data is decoded there)."""
    header, comma, payload = url.partition(",")
    if not comma:
        raise RequestError("malformed data URL: no comma between its header and its data "
                           "(expected data:image/png;base64,<data>)", param)
    media_type, *params = header[len("data:"):].split(";")
    if not media_type.lower().startswith("image/"):
        raise RequestError(f"data URL of type {media_type or 'text/plain'!r}: an image/* type is expected", param)
    if "base64" not in (p.strip().lower() for p in params):
        raise RequestError("data URL without ;base64: send the image base64-encoded (data:image/png;base64,<data>)",
                           param)
    if not payload or "," in payload:
        raise RequestError("data URL: no base64 data after its comma" if not payload
                           else "data URL: a second comma in its data (base64 has none)", param)
    try:
        data = binascii.a2b_base64(payload)  # as leniently as the processor will decode it
    except (binascii.Error, ValueError) as e:
        raise RequestError(f"data URL: its data is not valid base64 ({e})", param) from None
    check_image_header(data, param)
    return url if url.startswith("data:image/") else f"data:{media_type.lower()};base64,{payload}"


def check_image_header(data: bytes, param: str) -> None:
    """Refuse bytes that are no image Pillow knows, or an image of more than MAX_IMAGE_PIXELS pixels (only its
    header is read: the pixels are decoded by the processor)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        raise RequestError(f"the image cannot be decoded ({type(e).__name__}: {str(e)[:200]})", param) from None
    if width * height > MAX_IMAGE_PIXELS:
        raise RequestError(f"the image is {width}x{height} = {width * height:,} pixels, over the limit of "
                           f"{MAX_IMAGE_PIXELS:,} that guards against decompression bombs", param)


def local_file(url: str, param: str, policy: MediaPolicy) -> Path:
    """A local file's resolved path, if it lies under ``--allowed-local-media-path`` (symlinks followed)."""
    if policy.local_root is None:
        raise RequestError("local image files are not read by this server: send the image as a data URL, or start "
                           "the server with --allowed-local-media-path DIR", param)
    path = Path(unquote(urlsplit(url).path) if url.lower().startswith("file:") else url).expanduser()
    if not path.is_absolute():
        path = policy.local_root / path
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise RequestError(f"image file not found: {url}", param) from None
    if not resolved.is_relative_to(policy.local_root):
        raise RequestError(f"image file {url} is outside --allowed-local-media-path {policy.local_root}", param)
    try:
        with resolved.open("rb") as f:
            check_image_header(f.read(1 << 20), param)  # the header is in the first bytes
    except OSError as e:
        raise RequestError(f"image file {url} cannot be read ({e.strerror or e})", param) from None
    return resolved


def fetch(url: str, param: str, policy: MediaPolicy) -> bytes:
    """An image over HTTP(S) from a host of ``--allowed-media-domains``."""
    host = (urlsplit(url).hostname or "").lower()
    if host not in policy.domains:
        allowed = f" (allowed: {', '.join(sorted(policy.domains))})" if policy.domains else ""
        raise RequestError(f"image URLs of host {host or '?'!r} are not fetched by this server{allowed}: send the "
                           f"image as a data URL, or start the server with --allowed-media-domains {host or 'HOST'}",
                           param)
    try:
        with requests.get(url, timeout=FETCH_TIMEOUT, stream=True, allow_redirects=False) as r:
            if r.status_code != 200:
                raise RequestError(f"fetching the image {url} answered HTTP {r.status_code}", param)
            data = bytearray()
            for piece in r.iter_content(1 << 16):
                data += piece
                if len(data) > MAX_FETCHED_BYTES:
                    raise RequestError(f"the image {url} is larger than {MAX_FETCHED_BYTES >> 20} MiB", param)
            return bytes(data)
    except requests.RequestException as e:
        raise RequestError(f"the image {url} could not be fetched ({type(e).__name__})", param) from None
