"""`svc edge --layer URL` changes where the edge connects, not the app's channel settings."""

from __future__ import annotations

import os
import sys

from svcbus.edge.server import load_edge
from svcbus.layer import keep_options, open_layer

sys.path.insert(0, os.path.dirname(__file__))


def test_a_layer_url_keeps_the_apps_channel_settings() -> None:
    app = load_edge("edge_capacity_app:edge", "memory://from-the-command-line")
    assert isinstance(app.layer, str)
    layer = open_layer(app.layer)
    # The address is the command line's; the capacities and expiry are the app's.
    assert app.layer.startswith("memory://from-the-command-line?")
    assert layer.options.capacity_for("cap.receive") == 7
    assert layer.options.capacity_for("other") == 100
    assert layer.options.expiry == 30


def test_the_command_line_wins_where_both_set_an_option() -> None:
    url = keep_options(
        "nats://h:4222?channel_capacity=http.*:5", "memory://?channel_capacity=x:1&capacity=9"
    )
    options = open_layer(url).options
    assert options.channel_capacity == {"http.*": 5}
    assert options.capacity == 9
    # Options of one layer (prefix=...) do not travel to another.
    assert keep_options("redis://h/0", "nats://h?prefix=app") == "redis://h/0"
