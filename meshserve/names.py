"""Rules for model names, versions and request ids, shared by every service.

Names and versions become etcd keys and repository folder names, so they are kept to a
safe alphabet: no path separators, no `..`, no control characters, bounded length.
Request ids are the caller's, stored in the audit trail and shown in its tables, so they
are kept to visible ASCII: no control, bidi or other invisible characters, no spaces.
"""

from __future__ import annotations

import re

from meshserve.errors import InvalidArgument

MAX_NAME_LENGTH = 128
MAX_REQUEST_ID_LENGTH = 128
REQUEST_ID_RULE = (f"at most {MAX_REQUEST_ID_LENGTH} visible ASCII characters (letters, digits and punctuation "
                   "from '!' to '~'; no spaces, control or non-ASCII characters)")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _describe(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name, else raise InvalidArgument."""
    if not name:
        raise InvalidArgument("model name is empty")
    if len(name) > MAX_NAME_LENGTH or not _NAME.match(name) or ".." in name:
        raise InvalidArgument(
            f"invalid model name {_describe(name)}: use at most {MAX_NAME_LENGTH} letters, "
            "digits, '_', '-' or '.', starting with a letter or digit"
        )
    return name


def check_version(version: str) -> str:
    """Return ``version`` if it is empty (the default) or valid, else raise InvalidArgument."""
    if version and (len(version) > MAX_NAME_LENGTH or not _VERSION.match(version) or ".." in version):
        raise InvalidArgument(
            f"invalid model version {_describe(version)}: use letters, digits, '_', '-' or '.'"
        )
    return version


def is_request_id(value: str) -> bool:
    """Whether ``value`` may be a request id (empty: none given)."""
    return len(value) <= MAX_REQUEST_ID_LENGTH and value.isascii() and value.isprintable() and " " not in value


def check_request_id(value: str, what: str = "request id") -> str:
    """Return ``value`` if it is empty or a valid request id, else raise InvalidArgument saying what is allowed."""
    if not is_request_id(value):
        raise InvalidArgument(f"invalid {what} {_describe(value)}: use {REQUEST_ID_RULE}")
    return value


def version_sort_key(version: str) -> tuple[int, int, str]:
    """Order versions numerically when they are numbers, then by name."""
    return (0, int(version), "") if version.isascii() and version.isdigit() else (1, 0, version)
