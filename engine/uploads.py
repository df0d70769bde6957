"""Task attachment files: which files sopflow accepts, under which name and content type.

A file is accepted when all of these hold (:func:`check_file`):
1. it holds 1 .. ``max_bytes`` bytes (``SOPFLOW_MAX_ATTACHMENT_BYTES``, default 10 MiB);
2. its name, once sanitized (:func:`sanitize_filename`), ends in an extension on the
   allow-list (``SOPFLOW_ATTACHMENT_TYPES``, default :data:`DEFAULT_TYPES`);
3. its content is what that extension says: the format's magic bytes (PDF, PNG, JPEG,
   GIF), a ZIP container holding the parts of an Office Open XML or OpenDocument file, or
   text (no NUL or other control bytes) for ``txt``/``csv``.

The stored content type comes from the extension, never from the client's claim, and the
download is served with it plus ``nosniff`` and ``attachment``: a file sopflow stores is
never rendered by a browser as something else (an HTML page named ``x.pdf`` is refused at
step 3). The checks are a small table over the standard library (``zipfile``): a
signature library would add a dependency for four prefixes and guess Office files from
their first kilobytes, where opening the ZIP's directory says for sure.
"""
from __future__ import annotations

import hashlib
import io
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import InvalidInput, TooLarge, UnsupportedType

MAX_NAME_CHARS = 200  # a sanitized file name, extension included
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}  # controls, bidi/format marks, surrogates, private use
_RESERVED = str.maketrans({c: "_" for c in '<>:"|?*'})  # not allowed in file names on some systems


def _magic(*prefixes: bytes) -> Callable[[bytes], bool]:
    return lambda data: data.startswith(prefixes)


def _zip_names(data: bytes) -> set[str] | None:
    """The member names of a ZIP file, or None if ``data`` is not one (nothing is decompressed)."""
    if not data.startswith(b"PK\x03\x04"):
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return set(archive.namelist())
    except Exception:  # noqa: BLE001 - any failure to read the directory means "not a ZIP file"
        return None


def _ooxml(folder: str) -> Callable[[bytes], bool]:
    """An Office Open XML package (ECMA-376): ``[Content_Types].xml`` plus the document's folder."""
    def check(data: bytes) -> bool:
        names = _zip_names(data)
        return names is not None and "[Content_Types].xml" in names and any(n.startswith(folder) for n in names)
    return check


def _opendocument(mimetype: str) -> Callable[[bytes], bool]:
    """An OpenDocument package (ODF 1.2 part 3, 3.3): its ``mimetype`` member names the document type."""
    def check(data: bytes) -> bool:
        if _zip_names(data) is None:
            return False
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive, archive.open("mimetype") as member:
                return member.read(len(mimetype) + 1) == mimetype.encode()  # read bounded: no bomb inflates
        except Exception:  # noqa: BLE001 - no readable mimetype member: not an OpenDocument file
            return False
    return check


_TEXT_CONTROLS = bytes(c for c in range(32) if c not in (9, 10, 12, 13)) + b"\x7f"


def _text(data: bytes) -> bool:
    """Text: no NUL or other control bytes (tab, line breaks and form feed aside), in any 8-bit encoding."""
    return not any(c in data for c in _TEXT_CONTROLS)


@dataclass(frozen=True)
class FileType:
    """An accepted kind of file: its extension, the content type it is served with, how it is recognised."""

    extension: str
    content_type: str
    label: str  # what a person calls it, for messages ("a PDF file")
    matches: Callable[[bytes], bool]


KNOWN_TYPES: dict[str, FileType] = {t.extension: t for t in (
    FileType("pdf", "application/pdf", "a PDF file", _magic(b"%PDF-")),
    FileType("png", "image/png", "a PNG image", _magic(b"\x89PNG\r\n\x1a\n")),
    FileType("jpg", "image/jpeg", "a JPEG image", _magic(b"\xff\xd8\xff")),
    FileType("jpeg", "image/jpeg", "a JPEG image", _magic(b"\xff\xd8\xff")),
    FileType("gif", "image/gif", "a GIF image", _magic(b"GIF87a", b"GIF89a")),
    FileType("txt", "text/plain", "a text file", _text),
    FileType("csv", "text/csv", "a CSV text file", _text),
    FileType("docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
             "a Word document", _ooxml("word/")),
    FileType("xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
             "an Excel workbook", _ooxml("xl/")),
    FileType("odt", "application/vnd.oasis.opendocument.text", "an OpenDocument text",
             _opendocument("application/vnd.oasis.opendocument.text")),
    FileType("ods", "application/vnd.oasis.opendocument.spreadsheet", "an OpenDocument spreadsheet",
             _opendocument("application/vnd.oasis.opendocument.spreadsheet")),
)}
DEFAULT_TYPES: tuple[str, ...] = tuple(KNOWN_TYPES)


def sanitize_filename(raw: str | None) -> str:
    """A file name safe to store and to send back: ``"C:\\\\tmp\\\\../a\\u202eb.pdf"`` -> ``"ab.pdf"``.

    Keeps the last path part only (``/`` and ``\\`` both separate), turns white space
    (tabs, line breaks) into spaces, drops other control and format characters
    (including bidi overrides that disguise an extension), surrogates and private-use
    characters, replaces ``<>:"|?*`` with ``_``, collapses white space,
    strips dots and spaces at either end (no hidden files, no ``..``), and cuts the stem so
    the whole is at most :data:`MAX_NAME_CHARS` characters with its extension kept.
    Unicode NFC. May return ``""`` (nothing usable was left).
    """
    name = unicodedata.normalize("NFC", raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(" " if ch.isspace() else ch for ch in name  # tabs and line breaks become spaces
                   if ch.isspace() or unicodedata.category(ch) not in _UNSAFE_CATEGORIES).translate(_RESERVED)
    name = " ".join(name.split()).strip(" .")
    if len(name) <= MAX_NAME_CHARS:
        return name
    stem, dot, extension = name.rpartition(".")
    if not dot or len(extension) > 20:
        return name[:MAX_NAME_CHARS].rstrip(" .")
    return stem[:MAX_NAME_CHARS - len(extension) - 1].rstrip(" .") + "." + extension


@dataclass(frozen=True)
class AcceptedFile:
    """A file that passed :func:`check_file`: what is stored."""

    name: str  # sanitized
    content_type: str  # from the extension
    size: int  # bytes
    sha256: str  # hex, of the bytes as received


def check_file(filename: str | None, data: bytes, *, max_bytes: int, allowed: tuple[str, ...]) -> AcceptedFile:
    """Accept ``data`` named ``filename`` as an attachment, or refuse it saying why.

    ``allowed`` are lower-case extensions from :data:`KNOWN_TYPES`. Raises
    :class:`TooLarge` (413) above ``max_bytes``; :class:`InvalidInput` (422) for an empty
    file or a name with nothing usable left; :class:`UnsupportedType` (415) for an
    extension not allowed or content that is not what the extension says, naming the
    accepted types.
    """
    if len(data) > max_bytes:
        raise TooLarge("the file is larger than the limit of {max_bytes} bytes ({size})",
                       field="file", limit=max_bytes,
                       params={"max_bytes": max_bytes, "size": _mib(max_bytes)})
    if not data:
        raise InvalidInput("the file is empty", field="file")
    name = sanitize_filename(filename)
    if not name:
        raise InvalidInput("the file needs a name (with an extension such as .pdf)", field="file")
    accepted = ", ".join(allowed)
    extension = name.rpartition(".")[2].lower() if "." in name else ""
    kind = KNOWN_TYPES.get(extension) if extension in allowed else None
    if kind is None:
        raise UnsupportedType("'{name}' is not an accepted type of file; accepted: {accepted}", field="file",
                              accepted=list(allowed), params={"name": name, "accepted": accepted})
    if not kind.matches(data):
        raise UnsupportedType("the content of '{name}' does not match its .{extension} extension; accepted: {accepted}",
                              field="file", accepted=list(allowed),
                              params={"name": name, "extension": extension, "accepted": accepted})
    content_type = kind.content_type
    if content_type.startswith("text/") and _is_utf8(data):
        content_type += "; charset=utf-8"
    return AcceptedFile(name, content_type, len(data), hashlib.sha256(data).hexdigest())


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB" if size >= 1024 * 1024 else f"{size / 1024:.1f} KiB"
