"""The Redis layer: named channels on lists, groups on pub/sub, one hot path per server.

URLs (``docs/protocol.md`` has the full key and message layout)::

    redis://[[user]:password@]host[:port][/db]            one server
    redis://h1:6379,h2:6379/0                             sharded over several servers
    rediss://host:6380/0?ssl_ca_certs=/etc/ca.pem         TLS (ssl_certfile, ssl_keyfile,
                                                          ssl_cert_reqs, ssl_check_hostname)
    redis+sentinel://s1:26379,s2:26379/mymaster?db=0      the master a Sentinel names

Own query parameters: ``prefix`` (key prefix, default ``svcbus``), ``connect_timeout``
(seconds, default 5), the ``ssl_*`` ones above, and for Sentinel ``db``,
``sentinel_username``, ``sentinel_password``. Anything else is a ConfigurationError.

How the semantics map onto Redis:

* **Named channel** ``chat.receive``: the list ``{prefix}:c:chat.receive``. Each item is
  ``<13-digit deadline ms>:<message>``. A small Lua script pushes with an atomic
  capacity check (dropping expired items from the head first) and renews the key's
  TTL, so a channel nobody reads holds at most ``capacity`` items and vanishes when
  its newest message expires. Receivers pop up to N messages (the batch
  ``receive_many`` asks for) with one blocking BLMPOP and skip expired items
  (before Redis 7.0: a script that skips them, else BLPOP).
* **Process channels** ``edge.<token>!<local>``: one list per head ``{prefix}:p:edge.<token>``
  whose items also carry the local part; the owning layer demultiplexes into local
  buffers (bounded by each channel's capacity).
* **Groups**: one pub/sub channel per group. Each process subscribes to the groups
  its own channels belong to and fans out locally, so ``group_send`` is one PUBLISH
  whatever the member count. ``group_add`` of another process's channel sends a JSON
  control message to the owner and returns when the owner has confirmed its
  SUBSCRIBE. Named channels can be members too (a sorted set per group, pushed to by
  the sender).
* **Sending is pipelined.** All writes of a layer go through one connection per
  server in order, batched while the previous batch is in flight. ``send`` waits for
  the server's answer only while the channel might be full; when the last answer
  showed room to spare it returns at once. If another sender filled the channel in
  between, the refusal is reported by the next ``send`` to that channel or by
  ``flush()`` as ChannelFull (the NATS-style "one message late").
* **Sharding** (several hosts): a name's server is ``jump_hash(crc32(name), n)``
  (routing names: the channel, the process head, the group). Every process
  subscribes to its control channel on every server.
* **Reconnection**: every connection reconnects on its own with backoff (0.05 s
  doubling to 2 s); pub/sub resubscribes; receivers keep waiting through an
  outage; sends during it raise LayerError. Disconnect and reconnect are logged
  once each per server (logger ``svcbus.layers.redis``).

Deadlines use the wall clock (like the envelope's ``ex``), so hosts need NTP.
Requires Redis 6.2 or later (LPOP with a count).
"""

from .layer import RedisLayer
from .resp import pack
from .url import ServerSpec, jump_hash, parse_url, shard_of

__all__ = ["RedisLayer", "ServerSpec", "jump_hash", "pack", "parse_url", "shard_of"]
