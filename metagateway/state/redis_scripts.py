"""
The Lua scripts the Redis state runs (:mod:`metagateway.state.redis`): each
is one atomic step in Redis, whatever the number of processes sharing it.
"""

from __future__ import annotations

#: ``KEYS``: user, address; ``ARGV``: now, window, user limit, address
#: limit, attempt id, record (1) or only look (0). Answers ``{0, wait}``
#: when held back, else ``{1, ""}`` (the attempt counted if recording).
BEGIN_LOGIN = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local horizon = string.format('%.17g', now - window)
local wait = nil
for i = 1, 2 do
  local limit = tonumber(ARGV[2 + i])
  if limit > 0 and window > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', horizon)
    local n = redis.call('ZCARD', KEYS[i])
    if n >= limit then
      local at = redis.call('ZRANGE', KEYS[i], n - limit, n - limit, 'WITHSCORES')
      local w = tonumber(at[2]) + window - now
      if wait == nil or w > wait then wait = w end
    end
  end
end
if wait ~= nil then return {0, string.format('%.17g', wait)} end
if ARGV[6] == '1' then
  for i = 1, 2 do
    local limit = tonumber(ARGV[2 + i])
    if limit > 0 and window > 0 then
      redis.call('ZADD', KEYS[i], ARGV[1], ARGV[5])
      redis.call('ZREMRANGEBYRANK', KEYS[i], 0, -(limit + 1))
      redis.call('PEXPIRE', KEYS[i], math.ceil(window * 1000))
    end
  end
end
return {1, ''}
"""

#: ``KEYS``: user, address; ``ARGV``: attempt id, succeeded (1) or
#: abandoned (0).
END_LOGIN = """
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

#: ``KEYS``: the token's key; ``ARGV``: value, milliseconds to live,
#: channel, message.
REVOKE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 1
"""

#: ``KEYS``: the user's key; ``ARGV``: issued before, until, milliseconds
#: to live, channel, message. Keeps the larger of each.
REVOKE_USER = """
local b = tonumber(ARGV[1])
local u = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, o = pcall(cjson.decode, cur)
  if ok and type(o) == 'table' then
    local ob = tonumber(o['b'])
    local ou = tonumber(o['u'])
    if ob and ob > b then b = ob end
    if ou and ou > u then
      u = ou
      local left = redis.call('PTTL', KEYS[1])
      if left > ttl then ttl = left end
    end
  end
end
redis.call('SET', KEYS[1], string.format('{"b":%.17g,"u":%.17g}', b, u), 'PX', ttl)
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
"""
