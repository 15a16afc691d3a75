# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""A legacy worker on durable channels, for test_legacy_durable.py (stdlib and svcbus_legacy).

Run as ``python legacy_app.py URL SCHEMAS`` next to a copy of sdk/legacy named
``svcbus_legacy``.
"""

from __future__ import absolute_import, division, print_function, unicode_literals

import logging
import sys

from svcbus_legacy import Worker, consumes


@consumes("lgd.flaky")
def flaky(message, ctx):
    if ctx.attempt < 3:
        raise RuntimeError("not yet (attempt {0})".format(ctx.attempt))
    # A durable channel: this send returns once JetStream stored it.
    ctx.send("asd.done", {"n": message["n"], "attempt": ctx.attempt})


@consumes("lgd.broken")
def broken(message):
    raise ValueError("cannot take {0}".format(message["n"]))


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if "svcbus" in sys.modules or any(m.startswith("svcbus.") for m in sys.modules):
        raise SystemExit("the legacy worker imported the main svcbus package")
    Worker(sys.argv[1], schemas=sys.argv[2]).run()
