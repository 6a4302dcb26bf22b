package redisquota

import "github.com/redis/go-redis/v9"

// bucketScript applies the token bucket arithmetic of limiter.MemoryStore
// to all of one call's buckets at once, on the Redis server's clock, so
// that every replica sees the same levels and a check debits all of its
// buckets or none: Redis runs a script atomically. All KEYS share the
// user's hash tag, so that a Redis Cluster finds them in one slot.
//
// KEYS[i] is bucket i, a hash of l (its level after the last change) and
// t (when that was, in microseconds of the server's clock); a missing
// key is a full bucket. ARGV[1] is the mode: "take" (a check: debit
// every bucket by its amount if each holds its need, else nothing),
// "charge" (a record: debit, or refund a negative amount up to the
// capacity, whatever the levels) or "read". Then four arguments per
// bucket: capacity, refill per microsecond, need, amount.
//
// It returns {allowed, level...}, allowed 1 or 0, levels as strings (a
// number would be truncated to an integer on its way out of Lua). A
// bucket that is full again is deleted, and the others expire when they
// would be: Redis memory follows the active users.
var bucketScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mode = ARGV[1]
local n = #KEYS
local levels = {}
local allowed = 1
for i = 1, n do
  local a = 1 + (i - 1) * 4
  local cap = tonumber(ARGV[a + 1])
  local v = redis.call('HMGET', KEYS[i], 'l', 't')
  local level = cap
  if v[1] then
    level = tonumber(v[1]) + (now - tonumber(v[2])) * tonumber(ARGV[a + 2])
    if level > cap then level = cap end
  end
  levels[i] = level
  if level < tonumber(ARGV[a + 3]) then allowed = 0 end
end
if mode == 'charge' then allowed = 1 end
if mode == 'read' then allowed = 0 end
if allowed == 1 then
  for i = 1, n do
    local a = 1 + (i - 1) * 4
    local cap = tonumber(ARGV[a + 1])
    local rate = tonumber(ARGV[a + 2])
    local level = levels[i] - tonumber(ARGV[a + 4])
    if level > cap then level = cap end
    levels[i] = level
    if level >= cap then
      redis.call('DEL', KEYS[i])
    else
      redis.call('HSET', KEYS[i], 'l', string.format('%.17g', level), 't', string.format('%.17g', now))
      redis.call('PEXPIRE', KEYS[i], math.ceil((cap - level) / rate / 1000) + 1000)
    end
  end
end
if mode == 'read' then allowed = 1 end
local out = {allowed}
for i = 1, n do out[i + 1] = string.format('%.17g', levels[i]) end
return out
`)

// replicasScript registers replica ARGV[1] in the sorted set KEYS[1],
// scored by the server's clock in milliseconds, forgets the replicas not
// seen for ARGV[2] milliseconds, and returns how many are left.
var replicasScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
`)
