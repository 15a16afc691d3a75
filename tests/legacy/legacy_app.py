# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""A legacy worker for the interop tests: standard library and svcbus_legacy only.

Run as ``python legacy_app.py URL SCHEMAS`` with a copy of sdk/legacy importable
as ``svcbus_legacy`` (and nothing else of svcbus).
"""

from __future__ import absolute_import, division, print_function, unicode_literals

import logging
import sys

from svcbus_legacy import Worker, consumes


@consumes("lg.add")
def add(message):
    return {"total": message["a"] + message["b"]}


@consumes("lg.echo")
def echo(message, ctx):
    ctx.send("as.seen", {"text": message["text"], "via": "legacy"})


@consumes("lg.ask")
def ask(message, ctx):
    product = ctx.request("as.mul", {"a": message["a"], "b": message["b"]})
    return {"total": product["total"] + 1}


@consumes("lg.fail")
def fail(message):
    raise ValueError('room "{0}" is unknown'.format(message["room"]))


@consumes("lg.fanout")
def fanout(message, ctx):
    ctx.group_send(message["group"], {"text": message["text"]})
    return {"ok": True}


@consumes("lg.join")
def join(message, ctx):
    channel = ctx.new_channel("member")
    ctx.group_add(message["group"], channel)
    return {"channel": channel}


@consumes("lg.collect")
def collect(message, ctx):
    return {"body": ctx.receive(message["channel"], timeout=5).body}


@consumes("lg.addto")
def addto(message, ctx):
    ctx.group_add(message["group"], message["channel"])
    return {"ok": True}


@consumes("lg.count")
def count(message, ctx):
    ctx.send("as.counted", {"n": message["n"]})


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if "svcbus" in sys.modules or any(m.startswith("svcbus.") for m in sys.modules):
        raise SystemExit("the legacy worker imported the main svcbus package")
    Worker(sys.argv[1], schemas=sys.argv[2], prefetch=8).run()
