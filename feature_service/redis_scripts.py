"""The Lua scripts ``RedisStore`` runs: a batch of events, or one user's snapshot, is applied
atomically in Redis, in one script call.

The arithmetic of the decayed scores is ``features.user_state.log_decayed_add``; the recent-event
member format is ``feature_service.store``'s (``<event_id> <item_id> <event_type>``). The scripts
derive the per-user key names from the prefix in their argument (``<prefix>:u:<user>:<part>``), so
they need a single Redis, not a Cluster. Numbers go back to Redis through ``fmt``: Lua's own
number-to-string conversion keeps 14 digits, too few for millisecond times.
"""

COMMON_LUA = """
local function fmt(x) return string.format('%.17g', x) end
local function event_id(member) return string.match(member, '^[^ |]+') end
local function has_event(key, ts, member)
  local id = event_id(member)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, ts, ts)) do
    if event_id(m) == id then return true end
  end
  return false
end
-- Keep the ``keep`` highest-scored members.
local function trim(key, keep) redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1)) end
-- Seen and bought items were SETs before they were capped: such a key becomes a ZSET (score 0,
-- older than anything touched since) the first time its user is written.
local function as_zset(key)
  if redis.call('TYPE', key).ok == 'set' then
    local members = redis.call('SMEMBERS', key)
    redis.call('DEL', key)
    for i = 1, #members, 1000 do
      local args = {}
      for j = i, math.min(i + 999, #members) do
        args[#args + 1] = 0
        args[#args + 1] = members[j]
      end
      redis.call('ZADD', key, unpack(args))
    end
  end
end
local function user_key(prefix, user, part) return prefix .. ':u:' .. user .. ':' .. part end
local USER_PARTS = {'recent', 'seen', 'bought', 'aff', 'ids'}
local function expire_user(prefix, user, ttl_s)
  for _, part in ipairs(USER_PARTS) do redis.call('EXPIRE', user_key(prefix, user, part), ttl_s) end
end
"""

# A batch of events. ARGV[1]: JSON, see RedisStore._batch_argument. Returns 1 per event applied, 0
# per duplicate (its id among the user's last ``dedup`` ids, or its offset at or below the last
# applied from its partition).
APPLY_BATCH_LUA = COMMON_LUA + """
local b = cjson.decode(ARGV[1])
local r = b.rules
local function logadd(current, term)
  if not current then return term end
  current = tonumber(current)
  local hi, lo = math.max(current, term), math.min(current, term)
  return hi + math.log(1 + 2 ^ (lo - hi)) / math.log(2)
end
local marks, dirty_marks = {}, {}
local trending, users, results = {}, {}, {}
-- Touch order, shared by every writer: a range of the store's counter for this batch's events.
local seq = redis.call('INCRBY', b.seq_key, #b.events) - #b.events
for i, e in ipairs(b.events) do
  -- e: user, event id, item, type, ts, purchase (0/1), log2 weight, categories, partition, offset
  local user, id, item, kind, ts, purchase, log2w, cats, part, offset = unpack(e)
  local fresh = true
  if part ~= '' then
    if marks[part] == nil then marks[part] = tonumber(redis.call('HGET', b.offsets_key, part) or -1) end
    if offset <= marks[part] then fresh = false else marks[part] = offset; dirty_marks[part] = true end
  end
  local ids = user_key(b.prefix, user, 'ids')
  if fresh and redis.call('ZSCORE', ids, id) then fresh = false end
  if fresh then
    seq = seq + 1
    local u = users[user]
    if not u then
      u = {}
      users[user] = u
      local seen = user_key(b.prefix, user, 'seen')
      if redis.call('TYPE', seen).ok == 'set' then  -- the uncapped layout: convert, then cap
        as_zset(seen)
        trim(seen, r.seen)
        local bought = user_key(b.prefix, user, 'bought')
        as_zset(bought)
        trim(bought, r.bought)
      end
    end
    redis.call('ZADD', ids, fmt(seq), id)
    trim(ids, r.dedup)
    local recent = user_key(b.prefix, user, 'recent')
    local member = id .. ' ' .. item .. ' ' .. kind
    if not has_event(recent, fmt(ts), member) then
      redis.call('ZADD', recent, fmt(ts), member)
      trim(recent, r.history)
    end
    local seen = user_key(b.prefix, user, 'seen')
    -- a new member may take a set past its cap; touching one already there cannot
    if redis.call('ZADD', seen, fmt(seq), item) == 1 then trim(seen, r.seen) end
    if purchase == 1 then
      local bought = user_key(b.prefix, user, 'bought')
      if redis.call('ZADD', bought, fmt(seq), item) == 1 then trim(bought, r.bought) end
    end
    -- affinities: summed per user over the batch, written once per category at the end
    local aff_term = log2w + ts / r.affinity_half_life_ms
    for _, c in ipairs(cats) do u[c] = logadd(u[c], aff_term) end
    trending[item] = logadd(trending[item], log2w + ts / r.trending_half_life_ms)
    results[i] = 1
  else
    results[i] = 0
  end
end
for user, aff_terms in pairs(users) do
  if next(aff_terms) then
    local aff = user_key(b.prefix, user, 'aff')
    for c, term in pairs(aff_terms) do
      redis.call('HSET', aff, c, fmt(logadd(redis.call('HGET', aff, c), term)))
    end
  end
  redis.call('SET', user_key(b.prefix, user, 'updated'), b.now_ms, 'EX', r.ttl_s)
  expire_user(b.prefix, user, r.ttl_s)
end
for item, term in pairs(trending) do
  redis.call('ZADD', b.trending_key, fmt(logadd(redis.call('ZSCORE', b.trending_key, item), term)), item)
end
-- Trimmed in bulk at twice the cap, as the in-process store does: an item new to a full table
-- has room to gather score before the next trim.
if next(trending) and redis.call('ZCARD', b.trending_key) > 2 * r.trending then
  trim(b.trending_key, r.trending)
end
for part in pairs(dirty_marks) do redis.call('HSET', b.offsets_key, part, marks[part]) end
return results
"""

# One user's snapshot. ARGV[1]: JSON {prefix, user, seq_key, rules, recent: [[ts, member]...],
# seen: [item...], bought: [item...]} (items in event order). Returns the user's history length.
SNAPSHOT_LUA = COMMON_LUA + """
local s = cjson.decode(ARGV[1])
local r = s.rules
local recent = user_key(s.prefix, s.user, 'recent')
for _, pair in ipairs(s.recent) do
  local ts, member = fmt(pair[1]), pair[2]
  if not has_event(recent, ts, member) then redis.call('ZADD', recent, ts, member) end
end
trim(recent, r.history)
local seq = redis.call('INCRBY', s.seq_key, #s.seen + #s.bought) - #s.seen - #s.bought
for _, part in ipairs({{'seen', s.seen, r.seen}, {'bought', s.bought, r.bought}}) do
  local key = user_key(s.prefix, s.user, part[1])
  as_zset(key)
  for _, item in ipairs(part[2]) do
    seq = seq + 1
    redis.call('ZADD', key, fmt(seq), item)
  end
  trim(key, part[3])
end
expire_user(s.prefix, s.user, r.ttl_s)
redis.call('EXPIRE', user_key(s.prefix, s.user, 'updated'), r.ttl_s)
return redis.call('ZCARD', recent)
"""
