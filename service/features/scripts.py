"""Lua scripts: the few steps that must be atomic on the server.

* ``APPEND``: read the live (and loading) version, read-concat-trim-write the user's history under
  the live version, and log the append for the version being loaded. Atomic, so the next read sees
  it, concurrent appends never lose each other, and an append either precedes the switch (it is in
  the pending log, replayed before the switch) or follows it (it lands on the new version).
* ``DRAIN``: replay a batch of the pending log onto the version being loaded.
* ``SWITCH``: replay what is left of the log and make the loaded version live, in one step, only if
  this loader still owns the loading marker.
* ``BEGIN`` / ``REFRESH`` / ``RELEASE``: take, keep alive and drop the loading marker.

A history is a string of int32 ids, so concatenation and trimming are plain string operations
(``string.sub`` keeps the newest bytes). APPEND, DRAIN and SWITCH build history key names inside
the script from the prefix, version and bucket: fine on one Redis server (scripts without a
shebang may touch undeclared keys), not on Redis Cluster, where a script may only touch keys of
one slot. The cluster mode uses single-slot steps instead (the order is in the layout module's
docstring):

* ``LOG_APPEND`` (``{P}`` slot): read the live version and its history length, and log the append
  for the version being loaded;
* ``APPLY`` (one user's ``{bB}`` slot): read-concat-trim-write one history;
* ``SWITCH_DRAINED`` (``{P}`` slot): make the loaded version live only if its pending log is
  empty (the loader replays the log with APPLY first, and again if an append slipped in).
"""

from __future__ import annotations

from typing import Final

_APPLY: Final = """
local function history_limit(tag, version)
  local limit = redis.call('HGET', tag .. ':meta:' .. version, 'history_len')
  if not limit then
    return redis.error_reply('CORRUPT feature version ' .. version .. ' has no meta history_len')
  end
  return tonumber(limit)
end

local function apply(prefix, version, bucket, user, items, limit)
  local key = prefix .. ':' .. version .. ':h:{b' .. bucket .. '}'
  local value = (redis.call('HGET', key, user) or '') .. items
  local cap = limit * 4
  if #value > cap then
    value = string.sub(value, -cap)
  end
  redis.call('HSET', key, user, value)
  return #value / 4
end

local function apply_entry(prefix, version, entry, limit)
  local first = string.find(entry, ':', 1, true)
  local second = string.find(entry, ':', first + 1, true)
  apply(prefix, version, string.sub(entry, first + 1, second - 1), string.sub(entry, 1, first - 1),
        string.sub(entry, second + 1), limit)
end
"""

#: KEYS: live, loading. ARGV: prefix, tag, user id, bucket, packed items.
#: Returns {live version, history length after the append}.
APPEND: Final = (
    _APPLY
    + """
local live = redis.call('GET', KEYS[1])
if not live then
  return redis.error_reply('NOLIVE no live feature version')
end
local limit = history_limit(ARGV[2], live)
if type(limit) == 'table' then return limit end
local length = apply(ARGV[1], live, ARGV[4], ARGV[3], ARGV[5], limit)
local loading = redis.call('GET', KEYS[2])
if loading and loading ~= live then
  local entry = ARGV[3] .. ':' .. ARGV[4] .. ':' .. ARGV[5]
  redis.call('RPUSH', ARGV[2] .. ':pending:' .. loading, entry)
end
return {live, length}
"""
)

#: KEYS: pending log of the version. ARGV: prefix, tag, version, max entries.
#: Returns the number of entries replayed.
DRAIN: Final = (
    _APPLY
    + """
local entries = redis.call('LPOP', KEYS[1], ARGV[4])
if not entries then return 0 end
local limit = history_limit(ARGV[2], ARGV[3])
if type(limit) == 'table' then return limit end
for _, entry in ipairs(entries) do
  apply_entry(ARGV[1], ARGV[3], entry, limit)
end
return #entries
"""
)

#: KEYS: live, loading, pending log of the version, meta of the version.
#: ARGV: prefix, tag, version, unix time. Returns {previous live version or '', replayed}.
SWITCH: Final = (
    _APPLY
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return redis.error_reply('LOADLOST the loading marker of version ' .. ARGV[3] .. ' is gone')
end
local entries = redis.call('LRANGE', KEYS[3], 0, -1)
if #entries > 0 then
  local limit = history_limit(ARGV[2], ARGV[3])
  if type(limit) == 'table' then return limit end
  for _, entry in ipairs(entries) do
    apply_entry(ARGV[1], ARGV[3], entry, limit)
  end
end
redis.call('DEL', KEYS[3])
local previous = redis.call('GET', KEYS[1]) or ''
redis.call('SET', KEYS[1], ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[4], 'state', 'complete', 'switched_at', ARGV[4])
return {previous, #entries}
"""
)

#: KEYS: live, loading. ARGV: tag, user id, bucket, packed items.
#: Returns {live version, its history_len}; logs the append if another version is loading.
LOG_APPEND: Final = (
    _APPLY
    + """
local live = redis.call('GET', KEYS[1])
if not live then
  return redis.error_reply('NOLIVE no live feature version')
end
local limit = history_limit(ARGV[1], live)
if type(limit) == 'table' then return limit end
local loading = redis.call('GET', KEYS[2])
if loading and loading ~= live then
  local entry = ARGV[2] .. ':' .. ARGV[3] .. ':' .. ARGV[4]
  redis.call('RPUSH', ARGV[1] .. ':pending:' .. loading, entry)
end
return {live, limit}
"""
)

#: KEYS: one history hash. ARGV: user id, packed items, history_len.
#: Returns the user's history length after the append.
APPLY: Final = """
local value = (redis.call('HGET', KEYS[1], ARGV[1]) or '') .. ARGV[2]
local cap = tonumber(ARGV[3]) * 4
if #value > cap then
  value = string.sub(value, -cap)
end
redis.call('HSET', KEYS[1], ARGV[1], value)
return #value / 4
"""

#: KEYS: live, loading, pending log of the version, meta of the version.
#: ARGV: version, unix time. Returns the previous live version or ''; refuses (PENDING n) while
#: the log holds appends not yet replayed.
SWITCH_DRAINED: Final = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('LOADLOST the loading marker of version ' .. ARGV[1] .. ' is gone')
end
local waiting = redis.call('LLEN', KEYS[3])
if waiting > 0 then
  return redis.error_reply('PENDING ' .. waiting)
end
local previous = redis.call('GET', KEYS[1]) or ''
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[4], 'state', 'complete', 'switched_at', ARGV[2])
return previous
"""

#: KEYS: loading, version counter, version registry. ARGV: marker time-to-live in ms.
#: Returns the new version, or an error naming the load already running.
BEGIN: Final = """
local current = redis.call('GET', KEYS[1])
if current then
  return redis.error_reply('LOADBUSY ' .. current .. ' ' .. redis.call('PTTL', KEYS[1]))
end
local version = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], version, 'PX', ARGV[1])
redis.call('ZADD', KEYS[3], version, version)
return version
"""

#: KEYS: loading. ARGV: version, time-to-live in ms. Returns 1 if the marker is still ours.
REFRESH: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

#: KEYS: loading. ARGV: version. Drops the marker only if it is ours.
RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
