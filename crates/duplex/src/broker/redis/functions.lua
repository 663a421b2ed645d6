#!lua name=duplex
-- Duplex's Redis Function library: channel history (docs in
-- crates/duplex/src/broker/redis/history.rs). The node loads it with
-- FUNCTION LOAD REPLACE when `FCALL_RO duplex_version 0` answers another
-- version (the version is a hash of this text, filled in by the node).
--
-- Per channel, its Redis name (prefix included) being K:
--   {K}:meta     hash: e = epoch, s = top offset; expires meta_ttl after the last publish
--   {K}:history  stream, entry ids 0-<offset>, field d = the data; expires ttl after
-- and the live copy is PUBLISH K with "\255DXH1 <offset> <epoch> <data>".

local VERSION = '@VERSION@'
local TABLE = 'duplex:history'
local ENVELOPE = '\255DXH1 '

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

-- FCALL duplex_publish 1 K data [size ttl meta_ttl [1]] -> offset, or nil
-- (plain PUBLISH) when K has no history; with the trailing 1 (the node's
-- own call) {offset, epoch}.
local function publish(keys, args)
  local key, data = keys[1], args[1]
  if data == nil then
    return redis.error_reply('ERR duplex_publish needs the data: FCALL duplex_publish 1 <channel> <data>')
  end
  local size, ttl, meta_ttl
  if #args >= 4 then
    size, ttl, meta_ttl = tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
  else
    size, ttl, meta_ttl = stored_settings(key)
  end
  if not size or not ttl or not meta_ttl or size <= 0 or ttl <= 0 or meta_ttl <= 0 then
    redis.call('PUBLISH', key, data)
    return nil
  end
  local meta, stream = '{' .. key .. '}:meta', '{' .. key .. '}:history'
  local epoch = epoch_of(meta, stream, meta_ttl)
  local offset = redis.call('HINCRBY', meta, 's', 1)
  redis.call('XADD', stream, 'MAXLEN', size, '0-' .. offset, 'd', data)
  redis.call('EXPIRE', stream, ttl)
  redis.call('EXPIRE', meta, meta_ttl)
  redis.call('PUBLISH', key, ENVELOPE .. offset .. ' ' .. epoch .. ' ' .. data)
  if args[5] == '1' then
    return { offset, epoch }
  end
  return offset
end

-- FCALL duplex_history 1 K since limit reverse meta_ttl -> {epoch, top,
-- offset, data, offset, data, ...}; since '' = from the oldest kept.
local function history(keys, args)
  local key = keys[1]
  local since, limit, reverse, meta_ttl = args[1], tonumber(args[2]), args[3] == '1', tonumber(args[4])
  if since == nil or not limit or not meta_ttl or meta_ttl <= 0 then
    return redis.error_reply('ERR usage: FCALL duplex_history 1 <channel> <since or empty> <limit> <0|1 reverse> <meta_ttl>')
  end
  local meta, stream = '{' .. key .. '}:meta', '{' .. key .. '}:history'
  local epoch = epoch_of(meta, stream, meta_ttl)
  local out = { epoch, tonumber(redis.call('HGET', meta, 's')) or 0 }
  if limit > 0 then
    local after = '-'
    if since ~= '' then
      after = '(0-' .. since
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

redis.register_function{
  function_name = 'duplex_version',
  callback = function() return VERSION end,
  flags = { 'no-writes' },
}
redis.register_function('duplex_publish', publish)
redis.register_function('duplex_history', history)
