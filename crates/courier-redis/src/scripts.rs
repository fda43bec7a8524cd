//! The Lua scripts a queue runs on the server, each one atomic step. Every script takes the
//! stream as `KEYS[1]` and the consumer group as `ARGV[1]`; those acting on one received
//! entry take the consumer as `ARGV[2]`, the entry's id as `ARGV[3]` and its delivery count as
//! `ARGV[4]`, and do nothing (returning 0) unless that consumer still holds that delivery: a
//! lock that expired and was claimed by another consumer is not theirs to settle.
//!
//! Redis runs scripts with `EVALSHA`, loading them again after a restart.

use std::sync::LazyLock;

use redis::Script;

/// Whether consumer `ARGV[2]` holds entry `ARGV[3]` in its `ARGV[4]`th delivery.
const OWNED: &str = r"
local function owned()
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
  return #p > 0 and p[1][2] == ARGV[2] and p[1][4] == tonumber(ARGV[4])
end
";

/// The group's last delivered id (entries after it were never delivered).
const LAST_DELIVERED: &str = r"
local function last_delivered()
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return redis.error_reply('NOGROUP no stream ' .. KEYS[1])
  end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, last
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if name == ARGV[1] then return last end
  end
  return redis.error_reply('NOGROUP no consumer group ' .. ARGV[1] .. ' on ' .. KEYS[1])
end
";

fn script(parts: &[&str]) -> Script {
    Script::new(&parts.concat())
}

/// Creates the group (from the stream's first entry, the stream too if missing) unless it
/// exists, then deletes consumers that hold nothing and were idle for `ARGV[2]` ms (those of
/// processes gone). Returns how many it deleted.
pub(crate) static OPEN: LazyLock<Script> = LazyLock::new(|| {
    script(&[r"
local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(created) == 'table' and created.err and not string.find(created.err, 'BUSYGROUP') then
  return created
end
local deleted = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if pending == 0 and idle > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    deleted = deleted + 1
  end
end
return deleted
"])
});

/// Claims for consumer `ARGV[2]` the oldest entry whose lock ran out (idle for `ARGV[3]` ms:
/// abandoned, or held by a consumer that died). Returns `{id, fields, deliveries}`, or nil.
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(&[r"
for _ = 1, 10 do
  local stale = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', 1)
  if #stale == 0 then return false end
  local id = stale[1][1]
  local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], id)
  if #claimed > 0 and claimed[1] then
    return {claimed[1][1], claimed[1][2], stale[1][4] + 1}
  end
  -- Deleted by someone else while pending: nothing to deliver.
  redis.call('XACK', KEYS[1], ARGV[1], id)
end
return false
"])
});

/// Acknowledges and deletes a held entry. Returns 1, or 0 if it is not held.
pub(crate) static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        OWNED,
        r"
if not owned() then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
",
    ])
});

/// Sets the idle time of a held entry to `ARGV[5]` ms and its delivery count to `ARGV[6]`:
/// a renewal (idle 0, count kept), an abandon (idle past every lock, count kept) or the give
/// back of a delivery nobody saw (idle past every lock, count less one). Returns 1, or 0 if
/// it is not held.
pub(crate) static RESET: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        OWNED,
        r"
if not owned() then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[5], 'RETRYCOUNT', ARGV[6], 'JUSTID')
return 1
",
    ])
});

/// Moves a held entry to the dead-letter stream `KEYS[2]` (all its fields, and an empty
/// `message` if it had none), then acknowledges and deletes it. Returns 1, or 0 if it is not
/// held.
pub(crate) static BURY: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        OWNED,
        r"
if not owned() then return 0 end
local entry = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
if #entry > 0 then
  local fields = entry[1][2]
  local message = false
  for i = 1, #fields, 2 do
    if fields[i] == 'message' then message = true end
  end
  -- A foreign entry without a body gets an empty one: the dead letter is a message.
  if not message then
    fields[#fields + 1] = 'message'
    fields[#fields + 1] = ''
  end
  if not pcall(function() redis.call('XADD', KEYS[2], '*', unpack(fields)) end) then
    -- Too many fields to pass at once (a foreign entry): courier's fields only.
    local kept = {}
    for i = 1, #fields, 2 do
      local name = fields[i]
      if name == 'message_id' or name == 'correlation_id' or name == 'message_type'
        or name == 'sent_time' or name == 'message' then
        kept[#kept + 1] = name
        kept[#kept + 1] = fields[i + 1]
      end
    end
    redis.call('XADD', KEYS[2], '*', unpack(kept))
  end
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return 1
",
    ])
});

/// Gives back every entry consumer `ARGV[2]` holds (idle past every lock, `ARGV[3]` ms, its
/// count kept), then deletes the consumer if it held none. Returns how many it gave back.
pub(crate) static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    script(&[r"
local held = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 10000, ARGV[2])
for _, p in ipairs(held) do
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, p[1], 'IDLE', ARGV[3], 'JUSTID')
end
if #held == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return #held
"])
});

/// The messages ready to be taken: `{length, pending, stale}`, where ready is never delivered
/// (length less pending) plus stale (pending, idle for `ARGV[2]` ms: abandoned or expired).
pub(crate) static COUNT: LazyLock<Script> = LazyLock::new(|| {
    script(&[r"
local length = redis.call('XLEN', KEYS[1])
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])[1]
local stale = 0
if pending > 0 then
  stale = #redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[2], '-', '+', pending)
end
return {length, pending, stale}
"])
});

/// Up to `ARGV[3]` messages in the order a receive hands them out, without taking them:
/// never delivered entries, then stale ones (idle for `ARGV[2]` ms). Returns `{id, fields,
/// deliveries so far}` each.
pub(crate) static PEEK: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        LAST_DELIVERED,
        r"
local out = {}
local wanted = tonumber(ARGV[3])
local last = last_delivered()
if type(last) == 'table' then return last end
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', wanted)) do
  out[#out + 1] = {e[1], e[2], 0}
end
if #out < wanted then
  for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[2], '-', '+', wanted - #out)) do
    local entry = redis.call('XRANGE', KEYS[1], p[1], p[1])
    if #entry > 0 then out[#out + 1] = {entry[1][1], entry[1][2], p[4]} end
  end
end
return out
",
    ])
});

/// Deletes up to 1000 stale entries (idle for `ARGV[2]` ms) and up to 1000 never delivered
/// ones; held ones stay. Returns how many it deleted: call again until 0.
pub(crate) static CLEAR: LazyLock<Script> = LazyLock::new(|| {
    script(&[
        LAST_DELIVERED,
        r"
local deleted = 0
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[2], '-', '+', 1000)) do
  redis.call('XACK', KEYS[1], ARGV[1], p[1])
  redis.call('XDEL', KEYS[1], p[1])
  deleted = deleted + 1
end
local last = last_delivered()
if type(last) == 'table' then return last end
for _, e in ipairs(redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1000)) do
  redis.call('XDEL', KEYS[1], e[1])
  deleted = deleted + 1
end
return deleted
",
    ])
});
