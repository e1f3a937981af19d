"""A part's identity on the line: serial number, line, camera, product and free tags. It comes with the
image: from the API's form fields, from ``explain``'s flags, or for ``watch`` and ``audit`` from the file
name (``identity.pattern`` in the config, such as ``{line}_{camera}_{serial}.png``) or from a JSON sidecar
beside the image (``<image file name>.json``: ``{"serial": "A1234", "tags": ["rework"]}``), which wins
over the pattern field by field."""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass

from ..errors import InspectorError
from .reading import read_regular

FIELDS = ("serial", "line", "camera", "product")
MAX_LENGTH = 200  # characters of one field
MAX_TAGS, MAX_TAG_LENGTH = 20, 64
SIDECAR_LIMIT = 64 * 1024  # bytes of a sidecar file
HIDDEN = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}  # Unicode categories no identity field may hold


class IdentityError(InspectorError):
    """An identity that cannot be used: a field too long, with control characters, a bad sidecar."""


@dataclass(frozen=True)
class Identity:
    serial: str | None = None
    line: str | None = None
    camera: str | None = None
    product: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not any((*self.values().values(), self.tags))

    def values(self) -> dict[str, str | None]:
        return {f: getattr(self, f) for f in FIELDS}

    def as_dict(self) -> dict:
        return {**self.values(), "tags": list(self.tags)}

    def key(self) -> str:
        """What makes two arrivals of the same bytes the same part (SHA-256 of the identity)."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()

    def merged(self, other: Identity) -> Identity:
        """This identity with ``other``'s fields where ``other`` has them (tags: ``other``'s if any)."""
        values = {f: getattr(other, f) or getattr(self, f) for f in FIELDS}
        return Identity(**values, tags=other.tags or self.tags)


NO_IDENTITY = Identity()  # an image that came without one


def _clean(name: str, value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise IdentityError(f"{name}: must be text, got {type(value).__name__}")
    bad = next((ch for ch in value if unicodedata.category(ch) in HIDDEN), None)
    if bad is not None:  # control, format (zero-width, bidi override), unpaired surrogate, line separators
        raise IdentityError(f"{name}: control characters are not allowed (U+{ord(bad):04X})")
    value = value.strip()
    if len(value) > MAX_LENGTH:
        raise IdentityError(f"{name}: longer than {MAX_LENGTH} characters")
    return value or None


def make_identity(serial=None, line=None, camera=None, product=None, tags=()) -> Identity:
    """A checked identity; ``tags`` a list, or one comma-separated text. IdentityError names the field."""
    if isinstance(tags, str):
        tags = [t for t in tags.split(",")]
    if not isinstance(tags, list | tuple):
        raise IdentityError("tags: must be a list of texts")
    if len(tags) > MAX_TAGS:
        raise IdentityError(f"tags: at most {MAX_TAGS}")
    cleaned = []
    for t in tags:
        tag = _clean("tags", t)
        if tag is not None and len(tag) > MAX_TAG_LENGTH:
            raise IdentityError(f"tags: {tag[:20]!r}... is longer than {MAX_TAG_LENGTH} characters")
        if tag is not None and tag not in cleaned:
            cleaned.append(tag)
    return Identity(serial=_clean("serial", serial), line=_clean("line", line),
                    camera=_clean("camera", camera), product=_clean("product", product), tags=tuple(cleaned))


def compile_pattern(pattern: str) -> re.Pattern:
    """A file-name pattern (``{line}_{camera}_{serial}.png``; ``{*}`` matches anything, as much as it
    can; a field as little as it can) as a regular expression over the whole file name. IdentityError
    for an unknown or repeated field."""
    parts, seen, pos = [], set(), 0
    for m in re.finditer(r"\{([^{}]*)\}", pattern):
        parts.append(re.escape(pattern[pos:m.start()]))
        name = m.group(1)
        if name == "*":
            parts.append(".*")  # as much as it can: the fields after it take the rest
        elif name not in FIELDS:
            raise IdentityError(f"identity.pattern: {{{name}}} is not a field; use "
                                f"{', '.join('{' + f + '}' for f in FIELDS)} or {{*}}")
        elif name in seen:
            raise IdentityError(f"identity.pattern: {{{name}}} appears twice")
        else:
            seen.add(name)
            parts.append(f"(?P<{name}>.+?)")
        pos = m.end()
    parts.append(re.escape(pattern[pos:]))
    if not seen:
        raise IdentityError(f"identity.pattern: {pattern!r} names no field ({', '.join(FIELDS)})")
    return re.compile("".join(parts), re.DOTALL)


def sidecar_path(image_path: str | bytes) -> str | bytes:
    return image_path + (b".json" if isinstance(image_path, bytes) else ".json")


def identify(path: str | bytes, pattern: re.Pattern | None, sidecar: bool) -> tuple[Identity, str | None]:
    """(the identity of the image file ``path``, a note on what could not be read, or None). A file
    name that does not match the pattern, or a sidecar that is missing, gives no fields; a sidecar that is
    unreadable or invalid gives a note (the image is still explained and recorded)."""
    identity, notes = Identity(), []
    if pattern is not None:
        name = os.fsdecode(os.path.basename(path))
        m = pattern.fullmatch(name)
        if m is None:
            notes.append(f"the file name {name!r} does not match identity.pattern")
        else:
            try:
                identity = make_identity(**m.groupdict())
            except IdentityError as e:
                notes.append(f"the file name gives no identity ({e})")
    if sidecar:
        side = sidecar_path(path)
        try:
            raw = read_regular(side, SIDECAR_LIMIT, what="identity sidecar")
        except FileNotFoundError:
            raw = None
        except OSError as e:
            raw = None
            notes.append(f"{os.fsdecode(os.path.basename(side))}: cannot be read ({e.strerror or e})")
        if raw is not None:
            try:
                data = json.loads(raw.decode("utf-8-sig"))  # a BOM, as Windows tools write it, is fine
                if not isinstance(data, dict):
                    raise IdentityError("must be a JSON object")
                unknown = sorted(set(data) - {*FIELDS, "tags"})
                if unknown:
                    raise IdentityError(f"unknown key(s) {unknown}; use {', '.join(FIELDS)}, tags")
                identity = identity.merged(make_identity(**data))
            except (UnicodeDecodeError, json.JSONDecodeError, IdentityError) as e:
                notes.append(f"{os.fsdecode(os.path.basename(side))}: {e}")
    return identity, "; ".join(notes) or None
