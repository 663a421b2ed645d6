#!lua name=duplex
-- Duplex's Redis Function library: channel history (docs in
-- crates/duplex/src/broker/redis/history.rs), the ingest stream's steps
-- and presence (crates/duplex/src/broker/redis/presence.rs). The node
-- loads it with FUNCTION LOAD REPLACE when `FCALL_RO duplex_version 0`
-- answers another version (the version is a hash of this text, filled in
-- by the node).
--
-- Per channel, its Redis name (prefix included) being K:
--   {K}:meta     hash: e = epoch, s = top offset; expires meta_ttl after the last publish
--   {K}:history  stream, entry ids 0-<offset>, field d = the data; expires ttl after
-- and the live copy is PUBLISH K with "\255DXH1 <offset> <epoch> <data>".
-- The ingest stream (docs in crates/duplex/src/broker/redis/ingest.rs) adds
--   {K}:ingested:<id>  string "<offset> <epoch>" ("0 " without history): entry
--                      <id> was published on K; a repeat publishes nothing
--   <stream>:leader    string, the node id of the one node reading the stream
-- Presence (docs in crates/duplex/src/broker/redis/presence.rs) adds three
-- keys, given as keys P U L, expiring together a few leases after the
-- last join or tick and dropped with the channel's last member:
--   {K}:presence         hash conn -> <#holder>:<holder><#user>:<user><info>
--   {K}:presence:users   hash user key -> its member connections ('u' ..
--                        user, or 'c' .. conn for an anonymous member)
--   {K}:presence:leases  zset lease holder (node id/run) -> expiry, ms of Redis TIME

local VERSION = '@VERSION@'
local TABLE = 'duplex:history'
local ENVELOPE = '\255DXH1 '

-- Whether this Redis is a Redis Cluster node, asked once per load of the
-- library: live copies then go over sharded Pub/Sub (SPUBLISH), which is
-- what the nodes of a cluster subscribe to.
local sharded = nil
local function publish_command()
  if sharded == nil then
    sharded = string.find(redis.call('INFO', 'cluster'), 'cluster_enabled:1', 1, true) ~= nil
  end
  if sharded then
    return 'SPUBLISH'
  end
  return 'PUBLISH'
end

-- The keys of channel K = KEYS[1]: meta, history and (with an id) the
-- idempotency key, as given in KEYS[2..4] (how the nodes call, and how a
-- Redis Cluster needs it: every key a script touches is declared), else
-- built from K ('{K}:meta', ...: an older caller's `FCALL ... 1 K`).
local function channel_keys(keys, id)
  local key = keys[1]
  local meta = keys[2] or ('{' .. key .. '}:meta')
  local stream = keys[3] or ('{' .. key .. '}:history')
  local seen = nil
  if id then
    seen = keys[4] or ('{' .. key .. '}:ingested:' .. id)
  end
  return meta, stream, seen
end

local function new_epoch()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end

local function matches(pattern, name)
  if string.sub(pattern, -1) == '*' then
    local stem = string.sub(pattern, 1, -2)
    return string.sub(name, 1, #stem) == stem
  end
  return name == pattern
end

-- size, ttl, meta_ttl for K from the table the nodes stored; nil: no history.
local function stored_settings(key)
  local fields = redis.call('HGETALL', TABLE)
  local best, best_len = nil, -1
  for i = 1, #fields, 2 do
    local prefix = fields[i]
    if #prefix > best_len and string.sub(key, 1, #prefix) == prefix then
      best, best_len = fields[i + 1], #prefix
    end
  end
  if best == nil then
    return nil
  end
  local name = string.sub(key, best_len + 1)
  for line in string.gmatch(best, '[^\n]+') do
    local size, ttl, meta_ttl, pattern = string.match(line, '^(%d+) (%d+) (%d+) (.+)$')
    if pattern and matches(pattern, name) then
      size, ttl, meta_ttl = tonumber(size), tonumber(ttl), tonumber(meta_ttl)
      if size > 0 and ttl > 0 and meta_ttl > 0 then
        return size, ttl, meta_ttl
      end
      return nil
    end
  end
  return nil
end

-- The channel's epoch, a new one (and an empty stream) when its meta is gone.
local function epoch_of(meta, stream, meta_ttl)
  local epoch = redis.call('HGET', meta, 'e')
  if epoch then
    return epoch
  end
  epoch = new_epoch()
  redis.call('DEL', stream)
  redis.call('HSET', meta, 'e', epoch, 's', 0)
  redis.call('EXPIRE', meta, meta_ttl)
  return epoch
end

-- What a publish with an idempotency id answers: {offset, epoch, repeat}
-- (offset 0 and epoch '' on a channel without history).
local function once_reply(first, repeated)
  local offset, epoch = string.match(first, '^(%d+) (.*)$')
  return { tonumber(offset) or 0, epoch or '', repeated }
end

-- FCALL duplex_publish 1 K data [size ttl meta_ttl [1 [id keep]]] -> offset,
-- (or 3 K {K}:meta {K}:history, and 4 with {K}:ingested:<id>: the keys
-- declared, as on a Redis Cluster, which also needs the options: the
-- table is a key of another slot there)
-- or nil (plain PUBLISH) when K has no history; with the trailing 1 (the
-- node's own call) {offset, epoch}. With an id (the node republishing an
-- ingest stream entry) the first call publishes and remembers it for keep
-- seconds; a repeat within them publishes nothing: both answer once_reply.
local function publish(keys, args)
  local key, data = keys[1], args[1]
  if data == nil then
    return redis.error_reply('ERR duplex_publish needs the data: FCALL duplex_publish 1 <channel> <data>')
  end
  local keep = tonumber(args[7])
  local meta, stream, seen = channel_keys(keys, args[6])
  if seen then
    if not keep or keep <= 0 then
      return redis.error_reply('ERR duplex_publish: an id needs its keep time in seconds')
    end
    local first = redis.call('GET', seen)
    if first then
      return once_reply(first, 1)
    end
  end
  local size, ttl, meta_ttl
  if #args >= 4 then
    size, ttl, meta_ttl = tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
  elseif publish_command() == 'SPUBLISH' then
    return redis.error_reply('ERR duplex_publish on a Redis Cluster needs its options: FCALL duplex_publish 3 <channel> {<channel>}:meta {<channel>}:history <data> <size> <ttl> <meta_ttl>')
  else
    size, ttl, meta_ttl = stored_settings(key)
  end
  if not size or not ttl or not meta_ttl or size <= 0 or ttl <= 0 or meta_ttl <= 0 then
    redis.call(publish_command(), key, data)
    if seen then
      redis.call('SET', seen, '0 ', 'EX', keep)
      return once_reply('0 ', 0)
    end
    return nil
  end
  local epoch = epoch_of(meta, stream, meta_ttl)
  local offset = redis.call('HINCRBY', meta, 's', 1)
  -- Approximate trimming (whole stream nodes) costs Redis a fifth less per
  -- publish than exact; reads cut to the newest size (duplex_history).
  redis.call('XADD', stream, 'MAXLEN', '~', size, '0-' .. offset, 'd', data)
  redis.call('EXPIRE', stream, ttl)
  redis.call('EXPIRE', meta, meta_ttl)
  redis.call(publish_command(), key, ENVELOPE .. offset .. ' ' .. epoch .. ' ' .. data)
  if seen then
    redis.call('SET', seen, offset .. ' ' .. epoch, 'EX', keep)
    return once_reply(offset .. ' ' .. epoch, 0)
  end
  if args[5] == '1' then
    return { offset, epoch }
  end
  return offset
end

-- FCALL duplex_history 1 K since limit reverse meta_ttl [size] (or 3 K
-- {K}:meta {K}:history ...) -> {epoch,
-- top, offset, data, offset, data, ...}; since '' = from the oldest kept;
-- with size, only the newest size (the stream is trimmed approximately).
local function history(keys, args)
  local key = keys[1]
  local since, limit, reverse, meta_ttl = args[1], tonumber(args[2]), args[3] == '1', tonumber(args[4])
  if since == nil or not limit or not meta_ttl or meta_ttl <= 0 then
    return redis.error_reply('ERR usage: FCALL duplex_history 1 <channel> <since or empty> <limit> <0|1 reverse> <meta_ttl> [size]')
  end
  local meta, stream = channel_keys(keys)
  local epoch = epoch_of(meta, stream, meta_ttl)
  local top = tonumber(redis.call('HGET', meta, 's')) or 0
  local out = { epoch, top }
  if limit > 0 then
    local floor = -1
    local size = tonumber(args[5])
    if size and size > 0 and top > size then
      floor = top - size
    end
    local after = '-'
    if since ~= '' and tonumber(since) and tonumber(since) > floor then
      after = '(0-' .. since
    elseif floor >= 0 then
      after = '(0-' .. floor
    end
    local entries
    if reverse then
      entries = redis.call('XREVRANGE', stream, '+', after, 'COUNT', limit)
    else
      entries = redis.call('XRANGE', stream, after, '+', 'COUNT', limit)
    end
    for _, entry in ipairs(entries) do
      local offset = tonumber(string.sub(entry[1], 3))
      local fields = entry[2]
      for i = 1, #fields, 2 do
        if fields[i] == 'd' then
          table.insert(out, offset)
          table.insert(out, fields[i + 1])
        end
      end
    end
  end
  return out
end

-- FCALL duplex_history_restart 1 K <epoch> <offset> <meta_ttl> (or 3 K
-- {K}:meta {K}:history ...) -> {epoch, top}: a reader saw <offset> of
-- <epoch> but the stream ends below it (a failover promoted a replica
-- that missed the newest publications). Unless the channel moved to
-- another epoch or caught up, a new epoch starts (and an empty stream),
-- so the lost offsets, handed out again, are never taken for the ones
-- readers saw.
local function history_restart(keys, args)
  local seen, offset, meta_ttl = args[1], tonumber(args[2]), tonumber(args[3])
  if not seen or not offset or not meta_ttl or meta_ttl <= 0 then
    return redis.error_reply('ERR usage: FCALL duplex_history_restart 1 <channel> <epoch> <offset> <meta_ttl>')
  end
  local meta, stream = channel_keys(keys)
  local top = tonumber(redis.call('HGET', meta, 's')) or 0
  if redis.call('HGET', meta, 'e') == seen and top < offset then
    redis.call('DEL', meta)
  end
  local epoch = epoch_of(meta, stream, meta_ttl)
  return { epoch, tonumber(redis.call('HGET', meta, 's')) or 0 }
end

-- FCALL duplex_lease 1 <lease key> <holder> <ttl ms> -> 1 while holder holds
-- the lease (taken while free, as SET NX PX; extended while its own), else
-- 0; ttl 0 gives it back if it is the holder's.
local function lease(keys, args)
  local key, holder, ttl = keys[1], args[1], tonumber(args[2])
  if not holder or not ttl or ttl < 0 then
    return redis.error_reply('ERR usage: FCALL duplex_lease 1 <key> <holder> <ttl ms>')
  end
  local current = redis.call('GET', key)
  if ttl == 0 then
    if current == holder then
      redis.call('DEL', key)
    end
    return 0
  end
  if current and current ~= holder then
    return 0
  end
  redis.call('SET', key, holder, 'PX', ttl)
  return 1
end

-- FCALL duplex_ingest_claim 1 <stream> <group> <consumer> <min idle ms> ->
-- entries moved to consumer. Makes the group if it is missing (reading from
-- the stream's start), moves every entry pending at least min idle ms (in
-- any consumer) to consumer, then drops the other consumers left with none
-- (the node ids of past runs). One atomic step: no read lands in between.
local function ingest_claim(keys, args)
  local stream, group, me, idle = keys[1], args[1], args[2], tonumber(args[3])
  if not group or not me or not idle then
    return redis.error_reply('ERR usage: FCALL duplex_ingest_claim 1 <stream> <group> <consumer> <min idle ms>')
  end
  local made = redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  if type(made) == 'table' and made.err and not string.find(made.err, 'BUSYGROUP') then
    return made
  end
  local moved, cursor = 0, '0-0'
  repeat
    local reply = redis.call('XAUTOCLAIM', stream, group, me, idle, cursor, 'COUNT', 1000, 'JUSTID')
    cursor = reply[1]
    moved = moved + #reply[2]
  until cursor == '0-0'
  for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', stream, group)) do
    local fields = {}
    for i = 1, #consumer, 2 do
      fields[consumer[i]] = consumer[i + 1]
    end
    if fields['name'] ~= me and fields['pending'] == 0 then
      redis.call('XGROUP', 'DELCONSUMER', stream, group, fields['name'])
    end
  end
  return moved
end

-- FCALL duplex_ingest_ack 1 <stream> <group> <id> [id ...] -> entries
-- acknowledged (0 when the group is gone, and its pending entries with
-- it); then trims the entries every consumer is done with (below the
-- oldest one still pending, or below the last id given when none is).
local function ingest_ack(keys, args)
  local stream, group = keys[1], args[1]
  if not group or #args < 2 then
    return redis.error_reply('ERR usage: FCALL duplex_ingest_ack 1 <stream> <group> <id> [id ...]')
  end
  local acked = redis.pcall('XACK', stream, group, unpack(args, 2))
  if type(acked) == 'table' and acked.err then
    if string.find(acked.err, 'NOGROUP') then
      return 0
    end
    return acked
  end
  local pending = redis.pcall('XPENDING', stream, group)
  if pending.err then
    return acked
  end
  local floor = pending[2]
  if not floor then
    floor = args[#args]
  end
  redis.call('XTRIM', stream, 'MINID', '~', floor)
  return acked
end

-- Presence: members of a channel under one lease per node (holder).

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A score or expiry in ms as Redis reads it (no exponent).
local function ms(n)
  return string.format('%.0f', n)
end

local function pack_member(holder, user, info)
  return #holder .. ':' .. holder .. #user .. ':' .. user .. info
end

-- holder, user, info of a stored member (holder '' when unreadable).
local function unpack_member(v)
  local n, at = string.match(v, '^(%d+):()')
  if not n then
    return '', '', ''
  end
  n = tonumber(n)
  local holder = string.sub(v, at, at + n - 1)
  local m, from = string.match(v, '^(%d+):()', at + n)
  if not m then
    return '', '', ''
  end
  m = tonumber(m)
  return holder, string.sub(v, from, from + m - 1), string.sub(v, from + m)
end

-- The user a member counts as: its user id, or itself when anonymous.
local function user_key(conn, user)
  if user == '' then
    return 'c' .. conn
  end
  return 'u' .. user
end

-- Removes member conn (stored as v); its user goes to left if that was
-- the user's last connection.
local function remove_member(P, U, conn, v, left)
  local _, user, info = unpack_member(v)
  redis.call('HDEL', P, conn)
  local key = user_key(conn, user)
  if redis.call('HINCRBY', U, key, -1) <= 0 then
    redis.call('HDEL', U, key)
    table.insert(left, { conn, user, info })
  end
end

-- Removes the members and leases of the holders in dead (a set), plus
-- those of other holders' leases expired at now (but not of mine, a set):
-- one scan of the members, so only when there is something to remove.
-- Answers how many members went.
local function sweep(P, U, L, now, mine, dead, left)
  local any = next(dead) ~= nil
  for _, holder in ipairs(redis.call('ZRANGEBYSCORE', L, '-inf', ms(now))) do
    if not mine[holder] then
      dead[holder] = true
      any = true
    end
  end
  if not any then
    return 0
  end
  local all, removed = redis.call('HGETALL', P), 0
  for i = 1, #all, 2 do
    if dead[unpack_member(all[i + 1])] then
      remove_member(P, U, all[i], all[i + 1], left)
      removed = removed + 1
    end
  end
  for holder in pairs(dead) do
    redis.call('ZREM', L, holder)
  end
  return removed
end

-- Keeps the channel's keys keep ms more (after a join or tick).
local function keep_keys(P, U, L, keep)
  redis.call('PEXPIRE', P, keep)
  redis.call('PEXPIRE', U, keep)
  redis.call('PEXPIRE', L, keep)
end

-- Drops the channel's keys once its last member went.
local function drop_if_empty(P, U, L)
  if redis.call('HLEN', P) == 0 then
    redis.call('DEL', P, U, L)
  end
end

-- What a change answers: {lost, #joined, stamp, then conn, user, info of
-- each user who joined, then of each user who left}. The stamp (Redis
-- TIME in microseconds; 0 when nobody joined or left) orders the changes
-- of a channel, which all run on one server: a receiving node drops a
-- user's push older than one it delivered (pushes from two nodes can
-- cross on the way).
local function change_reply(lost, joined, left)
  local stamp = 0
  if #joined + #left > 0 then
    local t = redis.call('TIME')
    stamp = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  local out = { lost, #joined, stamp }
  for _, list in ipairs({ joined, left }) do
    for _, m in ipairs(list) do
      table.insert(out, m[1])
      table.insert(out, m[2])
      table.insert(out, m[3])
    end
  end
  return out
end

local function presence_keys(keys)
  if #keys ~= 3 then
    return nil
  end
  return keys[1], keys[2], keys[3]
end

-- FCALL duplex_presence_join 3 P U L <ttl ms> <keep ms> <conn> <holder>
-- <user> <info> [<conn> <holder> <user> <info> ...] -> a change reply.
-- Takes or renews each holder's lease (lost: one had none), sweeps other
-- holders' expired leases, then adds the members (a member already there
-- keeps its count; a new user joins).
local function presence_join(keys, args)
  local P, U, L = presence_keys(keys)
  local ttl, keep = tonumber(args[1]), tonumber(args[2])
  if not P or not ttl or not keep or ttl <= 0 or keep <= 0 or #args < 6 or (#args - 2) % 4 ~= 0 then
    return redis.error_reply('ERR usage: FCALL duplex_presence_join 3 <members> <users> <leases> <ttl ms> <keep ms> <conn> <holder> <user> <info> [...]')
  end
  local now, mine, lost, joined, left = now_ms(), {}, 0, {}, {}
  for i = 4, #args, 4 do
    mine[args[i]] = true
  end
  for holder in pairs(mine) do
    if not redis.call('ZSCORE', L, holder) then
      lost = 1
    end
  end
  sweep(P, U, L, now, mine, {}, left)
  for holder in pairs(mine) do
    redis.call('ZADD', L, ms(now + ttl), holder)
  end
  for i = 3, #args, 4 do
    local conn, holder, user, info = args[i], args[i + 1], args[i + 2], args[i + 3]
    local key = user_key(conn, user)
    local old = redis.call('HGET', P, conn)
    local counted = false
    if old then
      local _, old_user = unpack_member(old)
      counted = user_key(conn, old_user) == key
      if not counted then
        remove_member(P, U, conn, old, left)
      end
    end
    redis.call('HSET', P, conn, pack_member(holder, user, info))
    if not counted and redis.call('HINCRBY', U, key, 1) == 1 then
      table.insert(joined, { conn, user, info })
    end
  end
  keep_keys(P, U, L, keep)
  return change_reply(lost, joined, left)
end

-- FCALL duplex_presence_leave 3 P U L <holder> <conn> -> a change reply.
local function presence_leave(keys, args)
  local P, U, L = presence_keys(keys)
  local holder, conn = args[1], args[2]
  if not P or not holder or not conn then
    return redis.error_reply('ERR usage: FCALL duplex_presence_leave 3 <members> <users> <leases> <holder> <conn>')
  end
  local lost, left = 0, {}
  if not redis.call('ZSCORE', L, holder) then
    lost = 1
  end
  local removed = sweep(P, U, L, now_ms(), { [holder] = true }, {}, left)
  local v = redis.call('HGET', P, conn)
  if v then
    remove_member(P, U, conn, v, left)
    removed = removed + 1
  end
  if removed > 0 then
    drop_if_empty(P, U, L)
  end
  return change_reply(lost, {}, left)
end

-- FCALL duplex_presence_tick 3 P U L <holder> <ttl ms> <keep ms> -> a
-- change reply: renews holder's lease unless it is gone (lost: it is not
-- taken back, the node rejoins), sweeps other holders' expired leases.
local function presence_tick(keys, args)
  local P, U, L = presence_keys(keys)
  local holder, ttl, keep = args[1], tonumber(args[2]), tonumber(args[3])
  if not P or not holder or not ttl or not keep or ttl <= 0 or keep <= 0 then
    return redis.error_reply('ERR usage: FCALL duplex_presence_tick 3 <members> <users> <leases> <holder> <ttl ms> <keep ms>')
  end
  local now, lost, left = now_ms(), 0, {}
  if not redis.call('ZSCORE', L, holder) then
    lost = 1
  end
  if sweep(P, U, L, now, { [holder] = true }, {}, left) > 0 then
    drop_if_empty(P, U, L)
  end
  if lost == 0 then
    redis.call('ZADD', L, ms(now + ttl), holder)
    keep_keys(P, U, L, keep)
  end
  return change_reply(lost, {}, left)
end

-- FCALL duplex_presence_forget 3 P U L <holder> -> a change reply: all of
-- holder's members and its lease go at once (a node's clean shutdown).
local function presence_forget(keys, args)
  local P, U, L = presence_keys(keys)
  local holder = args[1]
  if not P or not holder then
    return redis.error_reply('ERR usage: FCALL duplex_presence_forget 3 <members> <users> <leases> <holder>')
  end
  local left = {}
  sweep(P, U, L, now_ms(), {}, { [holder] = true }, left)
  drop_if_empty(P, U, L)
  return change_reply(0, {}, left)
end

-- The holders whose leases are live at now (a set).
local function live_holders(L, now)
  local live = {}
  for _, holder in ipairs(redis.call('ZRANGEBYSCORE', L, '(' .. ms(now), '+inf')) do
    live[holder] = true
  end
  return live
end

-- FCALL_RO duplex_presence_members 3 P U L -> {conn, user, info, ...} of
-- the members under live leases.
local function presence_members(keys)
  local P, _, L = presence_keys(keys)
  if not P then
    return redis.error_reply('ERR usage: FCALL_RO duplex_presence_members 3 <members> <users> <leases>')
  end
  local live, out = live_holders(L, now_ms()), {}
  local all = redis.call('HGETALL', P)
  for i = 1, #all, 2 do
    local holder, user, info = unpack_member(all[i + 1])
    if live[holder] then
      table.insert(out, all[i])
      table.insert(out, user)
      table.insert(out, info)
    end
  end
  return out
end

-- FCALL_RO duplex_presence_stats 3 P U L -> {connections, users} under
-- live leases: the hashes' lengths while no lease is expired, else a scan.
local function presence_stats(keys)
  local P, U, L = presence_keys(keys)
  if not P then
    return redis.error_reply('ERR usage: FCALL_RO duplex_presence_stats 3 <members> <users> <leases>')
  end
  local now = now_ms()
  if redis.call('ZCOUNT', L, '-inf', ms(now)) == 0 then
    return { redis.call('HLEN', P), redis.call('HLEN', U) }
  end
  local live, connections, users, seen = live_holders(L, now), 0, 0, {}
  local all = redis.call('HGETALL', P)
  for i = 1, #all, 2 do
    local holder, user = unpack_member(all[i + 1])
    if live[holder] then
      connections = connections + 1
      local key = user_key(all[i], user)
      if not seen[key] then
        seen[key] = true
        users = users + 1
      end
    end
  end
  return { connections, users }
end

redis.register_function{
  function_name = 'duplex_version',
  callback = function() return VERSION end,
  flags = { 'no-writes' },
}
redis.register_function('duplex_publish', publish)
redis.register_function('duplex_history', history)
redis.register_function('duplex_history_restart', history_restart)
redis.register_function('duplex_lease', lease)
redis.register_function('duplex_ingest_claim', ingest_claim)
redis.register_function('duplex_ingest_ack', ingest_ack)
redis.register_function('duplex_presence_join', presence_join)
redis.register_function('duplex_presence_leave', presence_leave)
redis.register_function('duplex_presence_tick', presence_tick)
redis.register_function('duplex_presence_forget', presence_forget)
redis.register_function{
  function_name = 'duplex_presence_members',
  callback = presence_members,
  flags = { 'no-writes' },
}
redis.register_function{
  function_name = 'duplex_presence_stats',
  callback = presence_stats,
  flags = { 'no-writes' },
}
