"""The Lua scripts ``RedisStore`` runs: each event or snapshot is applied atomically in Redis.

The arithmetic of the decayed scores is ``features.user_state.log_decayed_add``; the recent-event
member format is ``feature_service.store``'s (``<event_id> <item_id> <event_type>``).
"""

# Lua: whether the recent ZSET already holds an event with this member's id at this time (written by
# a snapshot, or in the old member format).
HAS_EVENT_LUA = """
local function event_id(member) return string.match(member, '^[^ |]+') end
local function has_event(key, ts, member)
  local id = event_id(member)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, ts, ts)) do
    if event_id(m) == id then return true end
  end
  return false
end
local function trim(key, keep)
  local n = redis.call('ZCARD', key)
  if n > keep then redis.call('ZREMRANGEBYRANK', key, 0, n - keep - 1) end
end
"""

# Atomic apply. KEYS: dedup mark, recent (ZSET by event time), seen, bought, affinity (HASH of log
# scores), updated, trending (ZSET of log scores). ARGV: dedup ttl s, ts ms, recent member, item,
# history length, now ms, is purchase, log2(weight), affinity half life, trending half life,
# categories... The log-space arithmetic is features.user_state.log_decayed_add.
APPLY_LUA = HAS_EVENT_LUA + """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then return 0 end
local ts = tonumber(ARGV[2])
local log2w = tonumber(ARGV[8])
local function logadd(current, term)
  if not current then return term end
  current = tonumber(current)
  local hi, lo = math.max(current, term), math.min(current, term)
  return hi + math.log(1 + 2 ^ (lo - hi)) / math.log(2)
end
local function fmt(x) return string.format('%.17g', x) end
if not has_event(KEYS[2], ARGV[2], ARGV[3]) then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  trim(KEYS[2], tonumber(ARGV[5]))
end
redis.call('SADD', KEYS[3], ARGV[4])
if ARGV[7] == '1' then redis.call('SADD', KEYS[4], ARGV[4]) end
local aff_term = log2w + ts / tonumber(ARGV[9])
for i = 11, #ARGV do
  local cur = redis.call('HGET', KEYS[5], ARGV[i])
  redis.call('HSET', KEYS[5], ARGV[i], fmt(logadd(cur, aff_term)))
end
local cur = redis.call('ZSCORE', KEYS[7], ARGV[4])
redis.call('ZADD', KEYS[7], fmt(logadd(cur, log2w + ts / tonumber(ARGV[10]))), ARGV[4])
redis.call('SET', KEYS[6], ARGV[6])
return 1
"""

# One user's snapshot. KEYS: recent. ARGV: history length, then (ts ms, member) pairs.
SNAPSHOT_LUA = HAS_EVENT_LUA + """
for i = 2, #ARGV, 2 do
  if not has_event(KEYS[1], ARGV[i], ARGV[i + 1]) then redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
trim(KEYS[1], tonumber(ARGV[1]))
return redis.call('ZCARD', KEYS[1])
"""
