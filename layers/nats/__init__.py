"""The NATS layer: named channels live over core NATS with JetStream as the waiting
room, process channels and groups on core NATS.

``nats://host:4222`` (or ``tls://``) selects it; ``docs/protocol.md`` writes the
mapping out for other runtimes. In short, with the subject root ``svcbus``:

* **Named channel** ``chat.receive``, live: ``send`` publishes to
  ``svcbus.live.chat.receive``, where every process with waiting receivers
  listens in queue group ``receivers`` (each message reaches one of them); if
  nobody listens the server answers 503 and the sender stores the message in
  the channel's stream instead (:mod:`.sending`).
* **Named channel**, waiting room: a JetStream stream of its own,
  ``svcbus_ch_chat:receive`` (memory storage, ``max_msgs`` = capacity with
  discard-new, ``max_age`` = expiry), read through one shared no-ack pull
  consumer (:mod:`.streams`, :mod:`.receiving`).
* **Process channel** ``inbox.k3f9a1!c7d2``: core NATS subject
  ``svcbus.p.inbox.k3f9a1.c7d2``; the owner holds one subscription per head
  (:mod:`.process`).
* **Group** ``room.lobby``: subject ``svcbus.g.room.lobby``, one publish whatever
  the member count; each process fans out to its own members (:mod:`.groups`).

The parts: :mod:`.config` (settings, subjects, the URL), :mod:`.connection`,
:mod:`.streams`, :mod:`.publisher` and :mod:`.sending`, :mod:`.receiving`,
:mod:`.process`, :mod:`.groups`, :mod:`.losses`, :mod:`.wire` (shared protocol
bits), and :mod:`.layer`, the :class:`NatsLayer` that puts them together.
"""

from .config import (
    ACK_TIMEOUT,
    CONSUMER,
    DIRECT_FOR,
    LINGER,
    MARK_EVERY,
    MAX_IN_FLIGHT,
    MAX_UNCONFIRMED,
    PREFETCH,
    PULL_EXPIRES,
)
from .layer import NatsLayer

__all__ = [
    "ACK_TIMEOUT",
    "CONSUMER",
    "DIRECT_FOR",
    "LINGER",
    "MARK_EVERY",
    "MAX_IN_FLIGHT",
    "MAX_UNCONFIRMED",
    "PREFETCH",
    "PULL_EXPIRES",
    "NatsLayer",
]
