package redisquota

import (
	"context"
	"strings"

	"github.com/redis/go-redis/v9"
)

// bucketScript applies the token bucket arithmetic of limiter.MemoryStore
// to all of one call's buckets at once, on the Redis server's clock, so
// that every replica sees the same levels and a check debits all of its
// buckets or none: Redis runs a script atomically. All KEYS share the
// user's hash tag, so that a Redis Cluster finds them in one slot.
//
// KEYS[i] is bucket i, a string "l t r": its level after the last change,
// when that was (microseconds of the server's clock) and the refill rate
// its expiry was set for; a missing key is a full bucket. (A string with
// SET PX is one command a write where a hash takes two, HSET and
// PEXPIRE, and a smaller key.) ARGV[1]
// is the mode: "take" (a check: debit every bucket by its amount if each
// holds its need, else nothing), "charge" (a record: debit, or refund a
// negative amount up to the capacity, whatever the levels) or "read".
// ARGV[2] is a deadline in microseconds of the server's clock, 0 for
// none: a call that reaches Redis after it changes nothing and answers
// -1, since its caller has given up on it and answered from the fail
// mode (the call would otherwise be charged twice). Then five arguments
// per bucket: capacity, refill per microsecond, need, amount, and a
// budget's expiry in milliseconds (0 for a token bucket).
//
// A budget's key (its period's start is part of the name) holds the spend
// of its period as an integer; its level is capacity less spend, it does
// not refill, and a missing key is not a full budget but an unknown
// spend: the call then changes nothing and answers allowed -2 with the
// level "nan" for each budget missing, for the caller to seed them (SET NX
// with the expiry) and call again.
//
// It returns {allowed, now, level...}: allowed 1, 0, -1 past the
// deadline, or -2; now the server's clock; levels as strings (a number
// would be truncated to an integer on its way out of Lua). A bucket that
// is full again is deleted, and the others expire when they would be
// full: Redis memory follows the active users.
var bucketScript = redis.NewScript(bucketSource)

const bucketSource = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mode = ARGV[1]
local deadline = tonumber(ARGV[2])
local n = #KEYS
if deadline > 0 and now > deadline then
  local out = {-1, string.format('%.17g', now)}
  for i = 1, n do out[i + 2] = '0' end
  return out
end
-- A hundred years: the longest wait the limiter reports. A debt of 10^12
-- tokens against a small bucket would otherwise ask for an expiry Redis
-- cannot parse, and the script would fail after its first writes.
local maxTTL = 3153600000000
local levels, rates, stale, spent = {}, {}, {}, {}
local allowed, unknown = 1, false
for i = 1, n do
  local a = 3 + (i - 1) * 5
  local cap = tonumber(ARGV[a])
  local rate = tonumber(ARGV[a + 1])
  rates[i] = rate
  local v = redis.call('GET', KEYS[i])
  local level = cap
  if tonumber(ARGV[a + 4]) > 0 then
    if v then
      spent[i] = tonumber(v)
      level = cap - spent[i]
    else
      unknown = true
    end
  elseif v then
    local l, lt, r = string.match(v, '^(%S+) (%S+) (%S+)$')
    -- A server clock that went back (a failover) must not cost levels.
    level = tonumber(l) + math.max(0, now - tonumber(lt)) * rate
    if level > cap then level = cap end
    stale[i] = r ~= ARGV[a + 1]
  end
  levels[i] = level
  if level < tonumber(ARGV[a + 2]) then allowed = 0 end
end
if unknown then
  local out = {-2, string.format('%.17g', now)}
  for i = 1, n do
    if tonumber(ARGV[3 + (i - 1) * 5 + 4]) > 0 and not spent[i] then
      out[i + 2] = 'nan'
    else
      out[i + 2] = string.format('%.17g', levels[i])
    end
  end
  return out
end
if mode == 'charge' then allowed = 1 end
local write = allowed == 1 and mode ~= 'read'
for i = 1, n do
  local a = 3 + (i - 1) * 5
  local cap = tonumber(ARGV[a])
  local level = levels[i]
  if spent[i] then
    if write then
      -- Within 2^53, as the limiter bounds spend: exact in a Lua number.
      local s = math.min(math.max(0, spent[i] + tonumber(ARGV[a + 3])), 9007199254740992)
      levels[i] = cap - s
      redis.call('SET', KEYS[i], string.format('%d', s), 'KEEPTTL')
    end
  elseif write then
    level = level - tonumber(ARGV[a + 3])
    if level > cap then level = cap end
    levels[i] = level
  end
  -- Written, or its expiry set for another rate (the limit changed): the
  -- key must live until the bucket is full at this one.
  if not spent[i] and (write or stale[i]) then
    if level >= cap then
      redis.call('DEL', KEYS[i])
    else
      local ttl = math.min(math.ceil((cap - level) / rates[i] / 1000) + 1000, maxTTL)
      redis.call('SET', KEYS[i], string.format('%.17g %.17g ', level, now) .. ARGV[a + 1], 'PX', string.format('%d', ttl))
    end
  end
end
if mode == 'read' then allowed = 1 end
local out = {allowed, string.format('%.17g', now)}
for i = 1, n do out[i + 2] = string.format('%.17g', levels[i]) end
return out
`

// replicasScript registers replica ARGV[1] in the sorted set KEYS[1],
// scored by the server's clock in milliseconds, forgets the replicas not
// seen for ARGV[2] milliseconds, and returns {how many are left, the
// server's clock in microseconds}.
var replicasScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return {redis.call('ZCARD', KEYS[1]), string.format('%.17g', tonumber(t[1]) * 1000000 + tonumber(t[2]))}
`)

// noRetry is a command go-redis must not send twice: a script whose
// connection is lost after it was written may have run, and no call of
// the bucket script is idempotent. (MaxRetries reaches a cluster's
// per-node clients only: the cluster client retries on its own.)
type noRetry struct{ *redis.Cmd }

// NoRetry implements redis.Cmder.
func (noRetry) NoRetry() bool { return true }

// runBucketScript runs the bucket script by EVALSHA, and by EVAL when
// Redis does not know it (a restart, a new cluster node), never retried.
func runBucketScript(ctx context.Context, c redis.UniversalClient, keys []string, args []any) *redis.Cmd {
	run := func(name, script string) *redis.Cmd {
		cmdArgs := make([]any, 0, 3+len(keys)+len(args))
		cmdArgs = append(cmdArgs, name, script, len(keys))
		for _, k := range keys {
			cmdArgs = append(cmdArgs, k)
		}
		cmd := redis.NewCmd(ctx, append(cmdArgs, args...)...)
		_ = c.Process(ctx, noRetry{cmd})
		return cmd
	}
	cmd := run("evalsha", bucketScript.Hash())
	if err := cmd.Err(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
		cmd = run("eval", bucketSource)
	}
	return cmd
}
