# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: the legacy runtime loads this module too.
"""The Redis wire format both runtimes share: the Lua scripts and the list item layout.

The scripts are part of the protocol (``docs/protocol.md`` shows them with their
arguments): the async layer (``layers/redis/``) and the legacy worker
(``sdk/legacy/redis.py``) must load byte-identical scripts, so that EVALSHA finds
them whichever runtime loaded them first. So they live here once, standard
library only, in syntax Python 2.7 also accepts.

This file exists twice, byte for byte: ``sdk/redis_wire.py`` (``svcbus.redis_wire``,
what the async layer imports) and ``sdk/legacy/redis_wire.py`` (the copy that
travels with the stand-alone legacy package). Edit the first and copy it over the
second; ``tests/legacy/test_vermin.py`` fails while they differ.
"""

from __future__ import absolute_import, division, print_function, unicode_literals

import hashlib

SEND_SCRIPT = b"""\
local key = KEYS[1]
local capacity = tonumber(ARGV[1])
local n = redis.call('LLEN', key)
if n >= capacity then
  local now = tonumber(ARGV[3])
  while n > 0 do
    local head = redis.call('LINDEX', key, 0)
    local deadline = tonumber(string.sub(head, 1, 13))
    if deadline == nil or string.sub(head, 14, 14) ~= ':' then
      redis.call('RPUSH', key .. ':foreign', head)
      redis.call('LTRIM', key .. ':foreign', -1000, -1)
      redis.call('PEXPIRE', key .. ':foreign', 604800000)
    elseif deadline > now then break end
    redis.call('LPOP', key)
    n = n - 1
  end
  if n >= capacity then return -1 end
end
redis.call('RPUSH', key, ARGV[4] .. ARGV[5])
redis.call('PEXPIRE', key, ARGV[2])
return capacity - n - 1
"""

POP_SCRIPT = b"""\
local now = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local split = ARGV[3] == '1'
local out = {}
local got = 0
local foreign = 0
while got < want do
  local asked = want - got
  local items = redis.call('LPOP', KEYS[1], asked)
  if not items then break end
  for i = 1, #items do
    local item = items[i]
    local deadline = tonumber(string.sub(item, 1, 13))
    local sep = split and string.find(item, ':', 15, true)
    if deadline == nil or string.sub(item, 14, 14) ~= ':' or sep == nil then
      foreign = foreign + 1
      redis.call('RPUSH', KEYS[1] .. ':foreign', item)
    elseif deadline > now then
      got = got + 1
      if split then
        out[#out + 1] = string.sub(item, 15, sep - 1)
        out[#out + 1] = string.sub(item, sep + 1)
      else
        out[#out + 1] = string.sub(item, 15)
      end
    end
  end
  if #items < asked then break end
end
if foreign > 0 then
  redis.call('LTRIM', KEYS[1] .. ':foreign', -1000, -1)
  redis.call('PEXPIRE', KEYS[1] .. ':foreign', 604800000)
end
return {out, foreign}
"""


def split_item(item, split):
    # type: (bytes, bool) -> tuple[int, bytes | None, bytes] | None
    """``(deadline ms, local part, message)`` of a list item, or None for a foreign item.

    The same check as the scripts': 13 digits, ``:``, and for a process head's list
    the local part and another ``:``. Anything else was not written by svcbus.
    """
    if len(item) < 14 or item[13:14] != b":" or not item[:13].isdigit():
        return None
    if not split:
        return int(item[:13]), None, item[14:]
    local, sep, message = item[14:].partition(b":")
    if not sep:
        return None
    return int(item[:13]), local, message


def quarantine_key(key):
    # type: (bytes) -> bytes
    """Where the scripts move foreign items of list ``key`` (kept a week, the last 1000)."""
    return key + b":foreign"


SEND_SHA = hashlib.sha1(SEND_SCRIPT).hexdigest().encode("ascii")
POP_SHA = hashlib.sha1(POP_SCRIPT).hexdigest().encode("ascii")
