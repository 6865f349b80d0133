"""The Lua scripts ``RedisStore`` runs: each is one atomic step on keys that share a hash slot.

The comment above each script says what its KEYS and ARGV are and why it must be atomic.
"""

# Compare-and-set of a batch of states. The fence (partition <i4, offset <i8) sits at bytes 5..16
# (Lua is 1-based) of every value, the event's index within its message (<u2) at bytes 35..36; a write
# is skipped when the stored state is from the same partition at the same or a newer (offset, index):
# a replayed event, or a zombie worker after a rebalance.
_WRITE_STATES = """
local written = {}
for i, key in ipairs(KEYS) do
  local new = ARGV[i]
  local np, no = struct.unpack('<i4i8', string.sub(new, 5, 16))
  local ni = struct.unpack('<I2', string.sub(new, 35, 36))
  local cur = redis.call('GETRANGE', key, 4, 35)
  local ok = 1
  if #cur == 32 then
    local cp, co = struct.unpack('<i4i8', string.sub(cur, 1, 12))
    local ci = struct.unpack('<I2', string.sub(cur, 31, 32))
    if cp == np and (co > no or (co == no and ci >= ni)) then ok = 0 end
  end
  if ok == 1 then redis.call('SET', key, new) end
  written[i] = ok
end
return written
"""

# Dense index of each item id, assigning the next free one to new ids. The list doubles as the
# counter and the reverse map (position == index); both keys share a hash tag for Redis Cluster.
_ITEM_INDEX = """
local out = {}
for i, id in ipairs(ARGV) do
  local idx = redis.call('HGET', KEYS[1], id)
  if not idx then
    idx = redis.call('RPUSH', KEYS[2], id) - 1
    redis.call('HSET', KEYS[1], id, idx)
  end
  out[i] = tonumber(idx)
end
return out
"""

# Per-scene catalogues: each change sets an item's scene bitmask (0: hidden everywhere) and is appended
# to a change log as "index:mask"; the log's length is the catalogue version every batch read returns,
# so a worker (or the serve process) fetches only the changes it has not applied. Unknown ids are
# assigned an index as in _ITEM_INDEX. Replaying a change is harmless: the last one for an item wins.
_SET_ITEM_SCENES = """
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  local idx = redis.call('HGET', KEYS[1], id)
  if not idx then
    idx = redis.call('RPUSH', KEYS[2], id) - 1
    redis.call('HSET', KEYS[1], id, idx)
  end
  redis.call('RPUSH', KEYS[3], idx .. ':' .. ARGV[i + 1])
end
return redis.call('LLEN', KEYS[3])
"""

# Version counter and snapshots share the {params} hash tag: one script bumps the version and stores
# the snapshot under it atomically, on one server or on the cluster node that holds the tag's slot.
_PUBLISH_PARAMS = """
local version = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2] .. version, ARGV[1])
redis.call('DEL', KEYS[2] .. (version - tonumber(ARGV[2])))
return version
"""


# ---- serving: scene popularity ------------------------------------------------------------------
# What the request path (models.requests) answers an unknown user with. Rank workers count each applied
# event's (scene, item) into one sorted set per scene and time window (wall clock, ``window_s``), in
# the same round trip as their fenced state write; a read sums the newest ``windows`` windows. Counts
# are approximate: a zombie worker's refused batch is counted too, and each window keeps only its
# ``keep`` most counted items. All popularity keys share the {popularity} hash tag (one node).

# KEYS: one window key per scene touched; ARGV: ttl, keep, then per key: n, then n (member, count) pairs.
_COUNT_SCENE_ITEMS = """
local ttl, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local at = 3
for _, key in ipairs(KEYS) do
  local n = tonumber(ARGV[at])
  for j = 1, n do
    redis.call('ZINCRBY', key, ARGV[at + 2 * j], ARGV[at + 2 * j - 1])
  end
  at = at + 1 + 2 * n
  redis.call('EXPIRE', key, ttl)
  redis.call('ZREMRANGEBYRANK', key, 0, -keep - 1)
end
return 1
"""

# KEYS: ``windows`` window keys per scene, scene after scene; ARGV: windows, limit. Per scene, the
# ``limit`` items with the largest summed count, as a flat list of member, count (largest first).
_SCENE_POPULARITY = """
local windows, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for first = 1, #KEYS, windows do
  local command = {'ZUNION', windows}
  for j = first, first + windows - 1 do command[#command + 1] = KEYS[j] end
  command[#command + 1] = 'WITHSCORES'
  local summed = redis.call(unpack(command))   -- ascending by count
  local top = {}
  local n = #summed / 2
  for i = n, math.max(1, n - limit + 1), -1 do
    top[#top + 1] = summed[2 * i - 1]
    top[#top + 1] = summed[2 * i]
  end
  out[#out + 1] = top
end
return out
"""


# ---- the attention market (models.market): campaigns, sponsored lists shown, spend and the ledger -------
# All market keys share the {market} hash tag (one node on a cluster). A charge is applied once per charge
# id (deterministic: models.market.book.charge_id), capped at the campaign's daily budget, and appended
# with what it charged to the ledger list in the same script, so spend always equals the ledger's sum.
# KEYS[1]: the ledger list, then one spend hash per charge; ARGV: ttl, then per charge: id, price, budget,
# record. Returns the micros charged per charge (0 for one already applied).
_CHARGE = """
local ttl = tonumber(ARGV[1])
local out = {}
for i = 2, #KEYS do
  local at = 2 + (i - 2) * 4
  local id, price, budget = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  out[i - 1] = 0
  if redis.call('HEXISTS', KEYS[i], 'c:' .. id) == 0 then
    local spent = tonumber(redis.call('HGET', KEYS[i], 'spend') or '0')
    local charged = math.max(math.min(price, budget - spent), 0)
    redis.call('HSET', KEYS[i], 'c:' .. id, charged)
    redis.call('HINCRBY', KEYS[i], 'spend', charged)
    redis.call('EXPIRE', KEYS[i], ttl)
    redis.call('RPUSH', KEYS[1], charged .. ':' .. ARGV[at + 3])
    out[i - 1] = charged
  end
end
return out
"""

# Fenced write of users' last shown sponsored lists (models.market.book.shown_value): a 16-byte header
# b"AFSH" + partition <i4, offset <i8, then index <I2 at bytes 17..18 (an event's place in a batched message);
# a value is skipped when the stored one is from the same partition at the same or a later (offset, index).
_WRITE_SHOWN = """
local written = {}
for i, key in ipairs(KEYS) do
  local new = ARGV[i]
  local np, no, ni = struct.unpack('<i4i8I2', string.sub(new, 5, 18))
  local cur = redis.call('GETRANGE', key, 4, 17)
  local ok = 1
  if #cur == 14 then
    local cp, co, ci = struct.unpack('<i4i8I2', cur)
    if cp == np and (co > no or (co == no and ci >= ni)) then ok = 0 end
  end
  if ok == 1 then redis.call('SET', key, new, 'EX', ARGV[#KEYS + 1]) end
  written[i] = ok
end
return written
"""

# Moves the ledger's published cursor from ARGV[1] to ARGV[2] unless another publisher moved it further.
_ADVANCE_LEDGER = """
local at = tonumber(redis.call('GET', KEYS[1]) or '0')
if at < tonumber(ARGV[2]) then redis.call('SET', KEYS[1], ARGV[2]) end
return math.max(at, tonumber(ARGV[2]))
"""
