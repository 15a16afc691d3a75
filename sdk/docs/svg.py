"""The system diagram as inline SVG: services on the left, channels on the right.

A two-layer layout is enough for a message bus, because every edge joins a
service and a channel: blue arrows go from a service to a channel it sends on,
green arrows from a channel to the services consuming it, dashed orange arrows
from a service to a request channel it answers (the reply goes back to the
requester). Channels are ordered by the mean position of the services they
touch (one barycentre pass), which removes most crossings in small systems,
and edges spread over the height of each box so that none overlap at the ends.

No JavaScript, no external resources; every text is escaped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from html import escape

from .collect import EDGE_SERVICE, System

NODE_HEIGHT = 46
GAP = 18
MARGIN = 20
COLUMN_GAP = 260
CHAR_WIDTH = 7.2  # average width of a 13px sans-serif character, for box sizes
LEGEND_HEIGHT = 40

STYLES = {
    "produce": ("#2563eb", ""),
    "consume": ("#16a34a", ""),
    "reply": ("#ea580c", "6 4"),
}
LEGEND = (
    ("produce", "sends"),
    ("consume", "consumes"),
    ("reply", "replies to requests"),
)


@dataclass(frozen=True)
class Edge:
    """A line in the diagram between a service and a channel."""

    service: str
    channel: str
    kind: str
    """``produce``, ``consume`` or ``reply``."""


def edges(system: System) -> list[Edge]:
    """Every service-channel relation in ``system``, in a stable order."""
    found: list[Edge] = []
    for service in system.services:
        found += [Edge(service.name, c, "produce") for c in service.produces]
        found += [Edge(service.name, c, "consume") for c in service.consumes]
        found += [Edge(service.name, c, "reply") for c in service.replies]
    return sorted(found, key=lambda e: (e.service, e.channel, e.kind))


def _box_width(texts: list[str], minimum: float) -> float:
    return max([minimum, *(len(t) * CHAR_WIDTH + 28 for t in texts)])


def _column_tops(count: int, total_height: float) -> list[float]:
    used = count * NODE_HEIGHT + max(count - 1, 0) * GAP
    start = MARGIN + (total_height - used) / 2
    return [start + i * (NODE_HEIGHT + GAP) for i in range(count)]


def render(
    system: System,
    *,
    href: Callable[[str], str | None] | None = None,
    id_prefix: str = "svcbus",
) -> str:
    """The diagram of ``system`` as an ``<svg>`` element.

    ``href(channel)`` gives the link of a channel's box (``None`` for none);
    ``id_prefix`` keeps marker ids unique when a page holds several diagrams.
    """
    services = [s.name for s in system.services]
    relations = edges(system)
    service_index = {name: i for i, name in enumerate(services)}
    channels = _order_channels(list(system.channels), relations, service_index)

    service_width = _box_width(services, 150)
    contract_names = {
        name: (chan.contract.__contract_name__ if chan.contract else "untyped")
        for name, chan in system.channels.items()
    }
    channel_width = _box_width([*channels, *contract_names.values()], 180)
    rows = max(len(services), len(channels), 1)
    column_height = rows * NODE_HEIGHT + (rows - 1) * GAP
    width = MARGIN * 2 + service_width + COLUMN_GAP + channel_width
    height = MARGIN * 2 + column_height + LEGEND_HEIGHT

    service_x = MARGIN
    channel_x = MARGIN + service_width + COLUMN_GAP
    service_y = dict(zip(services, _column_tops(len(services), column_height), strict=True))
    channel_y = dict(zip(channels, _column_tops(len(channels), column_height), strict=True))

    # Where each edge meets its boxes: spread over the box height, ordered by
    # the other end's position so that edges leaving one box do not cross.
    service_ports = _ports(
        relations, key=lambda e: e.service, order=lambda e: channel_y[e.channel], tops=service_y
    )
    channel_ports = _ports(
        relations, key=lambda e: e.channel, order=lambda e: service_y[e.service], tops=channel_y
    )

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="svcbus-diagram" role="img" '
        f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'aria-label="{escape(_label(system))}">',
        f"<title>{escape(_label(system))}</title>",
        "<defs>",
    ]
    for kind, (color, _) in STYLES.items():
        parts.append(
            f'<marker id="{id_prefix}-arrow-{kind}" viewBox="0 0 10 10" refX="10" refY="5" '
            f'markerWidth="8" markerHeight="8" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
        )
    parts.append("</defs>")
    parts.append('<g class="edges" fill="none" stroke-width="1.6">')
    for edge in relations:
        sx, sy = service_x + service_width, service_ports[edge]
        cx, cy = channel_x, channel_ports[edge]
        color, dash = STYLES[edge.kind]
        bend = COLUMN_GAP * 0.45
        if edge.kind == "consume":  # channel -> service
            d = f"M{cx:.1f},{cy:.1f} C{cx - bend:.1f},{cy:.1f} {sx + bend:.1f},{sy:.1f} {sx:.1f},{sy:.1f}"
        else:  # service -> channel
            d = f"M{sx:.1f},{sy:.1f} C{sx + bend:.1f},{sy:.1f} {cx - bend:.1f},{cy:.1f} {cx:.1f},{cy:.1f}"
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<path class="edge edge-{edge.kind}" d="{d}" stroke="{color}"{dash_attr} '
            f'marker-end="url(#{id_prefix}-arrow-{edge.kind})">'
            f"<title>{escape(_edge_title(edge))}</title></path>"
        )
    parts.append("</g>")

    parts.append('<g class="services">')
    for name in services:
        y = service_y[name]
        fill = "#f1f5f9" if name == EDGE_SERVICE else "#eef2ff"
        parts.append(
            f'<g class="service"><rect x="{service_x}" y="{y:.1f}" width="{service_width:.0f}" '
            f'height="{NODE_HEIGHT}" rx="6" fill="{fill}" stroke="#4338ca"/>'
            f'<text x="{service_x + service_width / 2:.1f}" y="{y + NODE_HEIGHT / 2 + 5:.1f}" '
            f'text-anchor="middle" font-weight="bold">{escape(name)}</text></g>'
        )
    parts.append("</g>")

    parts.append('<g class="channels">')
    for name in channels:
        y = channel_y[name]
        box = (
            f'<rect x="{channel_x:.0f}" y="{y:.1f}" width="{channel_width:.0f}" '
            f'height="{NODE_HEIGHT}" rx="{NODE_HEIGHT / 2}" fill="#f0fdf4" stroke="#15803d"/>'
            f'<text x="{channel_x + channel_width / 2:.1f}" y="{y + 19:.1f}" '
            f'text-anchor="middle">{escape(name)}</text>'
            f'<text x="{channel_x + channel_width / 2:.1f}" y="{y + 35:.1f}" '
            f'text-anchor="middle" font-size="11" fill="#475569">'
            f"{escape(contract_names[name])}</text>"
        )
        link = href(name) if href else None
        if link:
            box = f'<a href="{escape(link)}">{box}</a>'
        parts.append(f'<g class="channel">{box}</g>')
    parts.append("</g>")

    parts.append(_legend(MARGIN, height - LEGEND_HEIGHT + 14, id_prefix))
    parts.append("</svg>")
    return "\n".join(parts)


def _order_channels(
    channels: list[str], relations: list[Edge], service_index: dict[str, int]
) -> list[str]:
    touching: dict[str, list[int]] = {c: [] for c in channels}
    for edge in relations:
        touching.setdefault(edge.channel, []).append(service_index[edge.service])

    def weight(channel: str) -> tuple[float, str]:
        found = touching.get(channel) or [len(service_index)]
        return (sum(found) / len(found), channel)

    return sorted(channels, key=weight)


def _ports(
    relations: list[Edge],
    *,
    key: Callable[[Edge], str],
    order: Callable[[Edge], float],
    tops: dict[str, float],
) -> dict[Edge, float]:
    by_node: dict[str, list[Edge]] = {}
    for edge in relations:
        by_node.setdefault(key(edge), []).append(edge)
    ports: dict[Edge, float] = {}
    for node, node_edges in by_node.items():
        node_edges.sort(key=lambda e: (order(e), e.kind, e.service, e.channel))
        step = NODE_HEIGHT / (len(node_edges) + 1)
        for i, edge in enumerate(node_edges, 1):
            ports[edge] = tops[node] + i * step
    return ports


def _legend(x: float, y: float, id_prefix: str) -> str:
    parts = ['<g class="legend" font-size="12">']
    for kind, label in LEGEND:
        color, dash = STYLES[kind]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(
            f'<path d="M{x:.0f},{y:.0f} H{x + 34:.0f}" stroke="{color}" stroke-width="1.6"'
            f'{dash_attr} marker-end="url(#{id_prefix}-arrow-{kind})"/>'
            f'<text x="{x + 42:.0f}" y="{y + 4:.0f}">{escape(label)}</text>'
        )
        x += 70 + len(label) * CHAR_WIDTH
    parts.append("</g>")
    return "".join(parts)


def _label(system: System) -> str:
    return f"Services and channels of {system.title}"


def _edge_title(edge: Edge) -> str:
    if edge.kind == "produce":
        return f"{edge.service} sends on {edge.channel}"
    if edge.kind == "consume":
        return f"{edge.service} consumes {edge.channel}"
    return f"{edge.service} replies to requests on {edge.channel}"
