# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""``python -m svcbus_legacy URL MODULE [MODULE...] [--schemas FILE]``: run a legacy worker.

Imports the modules (their ``@consumes`` functions register themselves) and runs
one worker for all of them until SIGINT or SIGTERM.
"""

from __future__ import absolute_import, division, print_function, unicode_literals

import argparse
import importlib
import logging
import sys

from .errors import SvcbusError
from .worker import Worker


def main(argv=None):
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m svcbus_legacy",
        description="Run @consumes functions of MODULEs as a svcbus legacy worker.",
    )
    parser.add_argument("url", help="nats://host:4222 or redis://host:6379/0")
    parser.add_argument("modules", nargs="+", help="modules to import (dotted names)")
    parser.add_argument("--schemas", help="contracts file from `python -m svcbus.legacy_export`")
    parser.add_argument("--dead-letter", help="channel for messages that fail validation")
    parser.add_argument("--prefetch", type=int, default=16, help="messages taken ahead")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        for name in args.modules:
            importlib.import_module(name)
        Worker(
            args.url, schemas=args.schemas, dead_letter=args.dead_letter, prefetch=args.prefetch
        ).run()
    except SvcbusError as exc:
        sys.stderr.write("error: {0}\n".format(exc))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
