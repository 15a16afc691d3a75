# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""Python 2 / 3 differences, in one place (standard library only)."""

from __future__ import absolute_import, division, print_function, unicode_literals

import binascii
import os
import sys
import time

PY2 = sys.version_info[0] == 2

# Spelled through type() so the source names no Python-2-only builtin (unicode, long).
text_type = type("")  # unicode on Python 2 (unicode_literals), str on Python 3
integer_types = tuple(set([int, type(2**64)]))  # (int, long) on Python 2, (int,) on 3
string_types = (text_type, bytes) if PY2 else (text_type,)  # Python 2 str is bytes

# A clock that never goes backwards (time.monotonic is Python 3.3+).
monotonic = getattr(time, "monotonic", time.time)


def to_bytes(value):
    """Text to UTF-8 bytes; bytes unchanged."""
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8")


def to_text(value):
    """UTF-8 bytes to text; text unchanged."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


def random_hex(nbytes):
    """``nbytes`` random bytes as lower-case hex text."""
    return binascii.hexlify(os.urandom(nbytes)).decode("ascii")


def now_ms():
    """Wall-clock time in integer milliseconds, the envelope's time unit."""
    return int(time.time() * 1000)
