"""The Lua scripts of Redis durable channels (docs/protocol.md, "Durable channels on Redis").

Every script touches the keys of one channel only (its stream and, for sends,
its duplicate-window key), which live on the channel's server, so each runs
atomically there. The pipes load them on every new connection, with the
at-most-once scripts (a restarted server has forgotten them).
"""

from __future__ import annotations

import hashlib

GROUP = b"workers"
"""The consumer group every process shares on a durable channel's stream."""

ADD_SCRIPT = b"""\
-- KEYS[1] stream, KEYS[2] duplicate-window key of the message id (absent: no id)
-- ARGV[1] capacity, ARGV[2] duplicate window ms, ARGV[3] max age ms, ARGV[4] message
-- Returns 0 a duplicate within the window (stored before), 1 + e stored, -1 - e full,
-- where e is the number of entries older than max age it dropped (expired).
if redis.replicate_commands then redis.replicate_commands() end
if #KEYS == 2 and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local e = redis.call('XTRIM', KEYS[1], 'MINID', now - tonumber(ARGV[3]))
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return -1 - e end
redis.call('XADD', KEYS[1], '*', 'd', ARGV[4])
if #KEYS == 2 then redis.call('SET', KEYS[2], '1', 'PX', ARGV[2]) end
return 1 + e
"""

CLAIM_SCRIPT = b"""\
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle ms, ARGV[4] cursor,
-- ARGV[5] count. Returns {next cursor, id1, message1, deliveries1, id2, ...}.
if redis.replicate_commands then redis.replicate_commands() end
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
                     'COUNT', ARGV[5])
local out = {r[1]}
for _, e in ipairs(r[2]) do
  if type(e) == 'table' and type(e[2]) == 'table' then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    out[#out + 1] = e[1]
    out[#out + 1] = e[2][2]
    out[#out + 1] = p[1][4]
  elseif type(e) == 'table' then
    -- Redis 6.2: a pending entry trimmed away (max age) comes back without fields.
    redis.call('XACK', KEYS[1], ARGV[1], e[1])
  end
end
return out
"""

SETTLE_SCRIPT = b"""\
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id,
-- ARGV[4] '' to remove the entry (ack, term), else the idle ms to set (nak, in progress).
if ARGV[4] == '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  return redis.call('XDEL', KEYS[1], ARGV[3])
end
-- Only while this consumer still owns the delivery: after an XAUTOCLAIM by
-- another worker, a late nak or in-progress signal must not take it back.
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #p == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
return 1
"""

ACK_SCRIPT = b"""\
-- KEYS[1] stream; ARGV[1] group, ARGV[2...] entry ids. Acknowledge and remove a
-- batch of entries (the settle script's ack, for many ids in one call).
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
return redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
"""

LEAVE_SCRIPT = b"""\
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer. Forget a consumer that holds
-- nothing (DELCONSUMER would make its pending entries unclaimable).
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""


EXPIRE_SCRIPT = b"""\
-- KEYS[1] stream; ARGV[1] max age ms. Drops entries older than max age (by the
-- server's clock, as the add script does) and returns how many: a channel nobody
-- sends to still expires its messages, and they are counted.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('XTRIM', KEYS[1], 'MINID', now - tonumber(ARGV[1]))
"""


def _sha(script: bytes) -> bytes:
    return hashlib.sha1(script).hexdigest().encode("ascii")


ADD_SHA = _sha(ADD_SCRIPT)
CLAIM_SHA = _sha(CLAIM_SCRIPT)
SETTLE_SHA = _sha(SETTLE_SCRIPT)
ACK_SHA = _sha(ACK_SCRIPT)
LEAVE_SHA = _sha(LEAVE_SCRIPT)
EXPIRE_SHA = _sha(EXPIRE_SCRIPT)

DURABLE_SCRIPTS = (ADD_SCRIPT, CLAIM_SCRIPT, SETTLE_SCRIPT, LEAVE_SCRIPT, EXPIRE_SCRIPT, ACK_SCRIPT)
"""Loaded by every pipe connection (``pipe.py``)."""
