"""Fixtures of the tracing tests (helpers live in trace_system.py)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # trace_system

from trace_system import Spans


@pytest.fixture
def spans() -> Spans:
    """A private provider and exporter; pass ``spans.tracer`` to each Bus."""
    return Spans()
