package redisquota

import (
	"context"
	"strings"

	"github.com/redis/go-redis/v9"
)

// bucketScript applies the token bucket arithmetic of limiter.MemoryStore
// to all of one call's buckets at once, on the Redis server's clock, so
// that every replica sees the same levels and a check debits all of its
// buckets or none: Redis runs a script atomically. All of a user's keys
// share the user's hash tag, so that a Redis Cluster finds them in one
// slot.
//
// KEYS[1..n] are the buckets, a string "l t r": the level after the last
// change, when that was (microseconds of the server's clock) and the
// refill rate its expiry was set for; a missing key is a full bucket.
// (A string with SET PX is one command a write where a hash takes two,
// HSET and PEXPIRE, and a smaller key.) With a request_id, KEYS[n+1] is
// its hold and KEYS[n+2] its charged marker; then, when ARGV[9] is 1,
// the replica's index of its holds, and, when ARGV[4] is not empty, the
// epoch key (neither is in the user's slot: only on a single Redis).
//
// ARGV[1] is the mode: "take" (a check: debit every bucket by its amount
// if each holds its need, else nothing), "charge" (a record: debit, or
// refund a negative amount up to the capacity, whatever the levels) or
// "read". ARGV[2] is a deadline in microseconds of the server's clock, 0
// for none: a call that reaches Redis after it changes nothing and
// answers -1, since its caller has given up on it and answered from the
// fail mode (the call would otherwise be charged twice). ARGV[3] is n.
// ARGV[4] is the epoch the caller knows: a Redis that lost it (restarted
// empty, flushed, failed over to a replica that never had it) or holds
// another changes nothing and answers -3, for the caller to recover (see
// recover.go). ARGV[5] is the request_id ("" for none), ARGV[6] this
// replica's instance, ARGV[7] and ARGV[8] the hold's and the marker's
// expiry in milliseconds. Then five arguments per bucket: capacity,
// refill per microsecond, need, amount, and a budget's expiry in
// milliseconds (0 for a token bucket). A concurrency limit is a budget
// of slots whose refill is 0: its expiry is set again at each write.
//
// Holds: a take with a request_id keeps what it debited from each bucket
// in the hold, a string (holdLua) of the replica instance that made it
// and each bucket key with its amount, so that the record of that request_id
// settles it on whichever replica it reaches: a charge with a request_id
// debits its amount less what the hold holds in that bucket, deletes the
// hold, and sets the charged marker, after which a charge of the same
// request_id (a client's retry, on any replica) changes nothing and
// answers 3, and so does a take of it (allowed 1). A marker "p" is a
// record a recovery counted in the budgets (contributeScript): its
// charge debits the other buckets only. A take that finds a
// hold of its request_id (a check sent again) gives the old hold back as
// it takes the new one.
//
// A budget's key (its period's start is part of the name) holds the spend
// of its period as an integer; its level is capacity less spend, it does
// not refill, and a missing key is not a full budget but an unknown
// spend: the call then changes nothing and answers allowed -2 with the
// level "nan" for each budget missing, for the caller to learn them
// (contributeScript) and call again.
//
// It returns {allowed, now, level...}: allowed 1, 0, -1 past the
// deadline, -2, -3, 2 for a take that replaced a hold of its request_id
// (allowed: the check was sent again), 3 for a charge already made, or
// 4 for a take whose record was charged already (allowed, nothing held); now the server's
// clock; levels as strings (a number would be truncated to an integer on
// its way out of Lua). A bucket that is full again is deleted, and the
// others expire when they would be full: Redis memory follows the active
// users.
//
// A batch: several calls' keys one after the other, then their arguments
// one after the other (each call's count of keys follows from its
// arguments). The script judges them in turn, atomically as a whole, on
// one reading of the clock and of the epoch key, and answers each call's
// {allowed, now, level...} one after the other; a call whose judgement
// fails (a key of another type, say) answers allowed -9 and the error in
// place of now, having changed what it wrote before failing, as a lone
// call that fails does, and the calls after it are judged still. The
// sidecar batches the calls that queue while one is in flight (see
// batch.go).
var bucketScript = redis.NewScript(bucketSource)

// argsBefore is the number of ARGV before the buckets' five each.
const argsBefore = 9

const bucketSource = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nowText = string.format('%.17g', now)
local B = 9
-- A hundred years: the longest wait the limiter reports. A debt of 10^12
-- tokens against a small bucket would otherwise ask for an expiry Redis
-- cannot parse, and the script would fail after its first writes.
local maxTTL = 3153600000000
-- The epoch key's value, read once a batch: no check writes it.
local epochs = {}
` + holdLua + `
-- check judges the call whose keys start after KEYS[ko] and whose
-- arguments start after ARGV[ao].
local function check(ko, ao)
local mode = ARGV[ao + 1]
local deadline = tonumber(ARGV[ao + 2])
local n = tonumber(ARGV[ao + 3])
local epoch = ARGV[ao + 4]
local id = ARGV[ao + 5]
local function answer(code)
  local out = {code, nowText}
  for i = 1, n do out[i + 2] = '0' end
  return out
end
if deadline > 0 and now > deadline then return answer(-1) end
local indexed = ARGV[ao + 9] == '1'
-- After the buckets: the hold and the marker (with a request_id), the
-- index (when indexed), the epoch key (when checked).
local extra = n
local hold, marker
if id ~= '' then hold, marker, extra = KEYS[ko + n + 1], KEYS[ko + n + 2], n + 2 end
local index
if indexed then index, extra = KEYS[ko + extra + 1], extra + 1 end
if epoch ~= '' then
  local ek = KEYS[ko + extra + 1]
  local e = epochs[ek]
  if e == nil then
    e = redis.call('GET', ek)
    epochs[ek] = e
  end
  if e ~= epoch then return answer(-3) end
end
-- One MGET reads the hold, the marker and the buckets (their slot is the
-- user's): a check that takes a hold paid a GET, an HGETALL and a GET a
-- bucket. MGET answers nil for a key of another type where GET fails, so
-- a bucket it does not find is read again by GET, which does.
local rk, off = {}, 0
if id ~= '' and mode ~= 'read' then rk[1], rk[2], off = hold, marker, 2 end
for i = 1, n do rk[off + i] = KEYS[ko + i] end
local vals = {}
if #rk == 1 then
  vals = {redis.call('GET', rk[1])}
elseif #rk > 1 then
  vals = redis.call('MGET', unpack(rk))
end
local duplicate, counted, over, marked = false, false, false, false
if id ~= '' and mode ~= 'read' then
  local m = vals[2]
  marked = m ~= false and m ~= nil
  if m == '1' or (m and mode == 'take') then
    -- The record of this request_id was charged: a record sent again is
    -- not charged again, and a check sent again after it holds nothing
    -- (its call is over) and is allowed.
    duplicate = mode == 'charge'
    over = mode == 'take'
    mode = 'read'
  elseif m then
    -- A recovery counted it in the budgets ("p"): charged to the others.
    counted = true
  end
end
-- What the hold of this request_id holds in each bucket.
local held = {}
local hasHold = false
if id ~= '' and mode ~= 'read' and vals[1] then
  local f = holdFields(vals[1])
  for j = 2, #f, 2 do held[f[j]] = tonumber(f[j + 1]) end
  hasHold = true
end
local levels, rates, stale, spent, back = {}, {}, {}, {}, {}
local allowed, unknown = 1, false
for i = 1, n do
  local a = ao + B + 1 + (i - 1) * 5
  local k = KEYS[ko + i]
  local cap = tonumber(ARGV[a])
  local rate = tonumber(ARGV[a + 1])
  rates[i] = rate
  back[i] = held[k] or 0
  held[k] = nil
  local v = vals[off + i]
  if not v and off + n > 1 then v = redis.call('GET', k) end
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
  if level + back[i] < tonumber(ARGV[a + 2]) then allowed = 0 end
end
if unknown then
  local out = {-2, nowText}
  for i = 1, n do
    if tonumber(ARGV[ao + B + 1 + (i - 1) * 5 + 4]) > 0 and not spent[i] then
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
  local a = ao + B + 1 + (i - 1) * 5
  local k = KEYS[ko + i]
  local cap = tonumber(ARGV[a])
  local level = levels[i]
  -- What this call debits: its amount less what its hold gives back.
  local amount = tonumber(ARGV[a + 3])
  if counted and spent[i] then amount = 0 end
  amount = amount - back[i]
  if spent[i] then
    if write then
      -- Within 2^53, as the limiter bounds spend: exact in a Lua number.
      local s = math.min(math.max(0, spent[i] + amount), 9007199254740992)
      levels[i] = cap - s
      if rates[i] == 0 then
        -- A concurrency limit's slots: the key lives past its last hold.
        redis.call('SET', k, string.format('%d', s), 'PX', ARGV[a + 4])
      else
        redis.call('SET', k, string.format('%d', s), 'KEEPTTL')
      end
    end
  elseif write then
    level = level - amount
    if level > cap then level = cap end
    levels[i] = level
  end
  -- Written, or its expiry set for another rate (the limit changed): the
  -- key must live until the bucket is full at this one.
  if not spent[i] and (write or stale[i]) then
    if level >= cap then
      redis.call('DEL', k)
    else
      local ttl = math.min(math.ceil((cap - level) / rates[i] / 1000) + 1000, maxTTL)
      redis.call('SET', k, string.format('%.17g %.17g ', level, now) .. ARGV[a + 1], 'PX', string.format('%d', ttl))
    end
  end
end
if write and hasHold then
  -- What the hold held in budgets this call does not touch (the rules or
  -- the period changed since the check) is given back too.
  for k, amount in pairs(held) do
    local v = redis.call('GET', k)
    if v and string.match(v, '^%d+$') then
      redis.call('SET', k, string.format('%d', math.max(0, tonumber(v) - amount)), 'KEEPTTL')
    end
  end
  -- (A take sets the hold again below.)
  if mode == 'charge' then redis.call('DEL', hold) end
end
if write and id ~= '' then
  if mode == 'charge' then
    redis.call('SET', marker, '1', 'PX', ARGV[ao + 8])
  elseif not marked then
    -- (A marker read at the start: no write of this call sets one.)
    local f = {holdField(ARGV[ao + 6])}
    for i = 1, n do
      local a = ao + B + 1 + (i - 1) * 5
      if tonumber(ARGV[a + 3]) ~= 0 then
        f[#f + 1] = holdField(KEYS[ko + i])
        f[#f + 1] = holdField(ARGV[a + 3])
      end
    end
    redis.call('SET', hold, table.concat(f), 'PX', ARGV[ao + 7])
    -- The index's expiry is set by the registration (replicasScript),
    -- not at each hold.
    if indexed then redis.call('SADD', index, hold) end
  end
end
if mode == 'read' then allowed = 1 end
if write and mode == 'take' and hasHold then allowed = 2 end
if duplicate then allowed = 3 end
if over then allowed = 4 end
local out = {allowed, nowText}
for i = 1, n do out[i + 2] = string.format('%.17g', levels[i]) end
return out
end
-- keysOf is how many keys the call whose arguments start after ARGV[ao]
-- has.
local function keysOf(ao)
  local k = tonumber(ARGV[ao + 3])
  if ARGV[ao + 5] ~= '' then k = k + 2 end
  if ARGV[ao + 9] == '1' then k = k + 1 end
  if ARGV[ao + 4] ~= '' then k = k + 1 end
  return k
end
local first = B + 5 * tonumber(ARGV[3])
if first == #ARGV then return check(0, 0) end
-- A batch: each call judged in turn, its error its own answer.
local out = {}
local ko, ao = 0, 0
while ao < #ARGV do
  local n = tonumber(ARGV[ao + 3])
  local ok, res = pcall(check, ko, ao)
  if not ok then
    res = {-9, tostring(res)}
    for i = 1, n do res[i + 2] = '0' end
  end
  for j = 1, #res do out[#out + 1] = res[j] end
  ko = ko + keysOf(ao)
  ao = ao + B + 5 * n
end
return out
`

// replicasScript registers instance ARGV[1] in the sorted set KEYS[1],
// scored by the server's clock in milliseconds, and forgets the instances
// not seen for ARGV[2] milliseconds, moving them to the set KEYS[3] of
// instances whose holds are to be given back. It sets the epoch KEYS[2]
// to ARGV[3] unless Redis holds one. It keeps this instance's index of
// holds KEYS[4] for ARGV[4] milliseconds more: every 2 s rather than at
// each hold, which saves a PEXPIRE a check; an index a replica killed
// between a hold and its next registration leaves without an expiry is
// deleted by the replica that gives its holds back (releaseLapsed). It returns {how many instances are
// live, the server's clock in microseconds, the epoch}.
var replicasScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
  redis.call('SADD', KEYS[3], unpack(gone))
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
redis.call('PEXPIRE', KEYS[4], ARGV[4])
redis.call('SET', KEYS[2], ARGV[3], 'NX')
return {redis.call('ZCARD', KEYS[1]), string.format('%.17g', tonumber(t[1]) * 1000000 + tonumber(t[2])), redis.call('GET', KEYS[2])}
`)

// releaseScript gives back the hold KEYS[1] when instance ARGV[1] made it
// (any instance when ARGV[1] is empty): what it holds in budgets is taken
// off their spend, and the hold is deleted. Token and request buckets
// refill by themselves. It returns 1 if there was such a hold.
var releaseScript = redis.NewScript(holdLua + `
local ok, v = pcall(redis.call, 'GET', KEYS[1])
local by, amounts = nil, {}
if ok then
  if not v then return 0 end
  local f = holdFields(v)
  by = f[1]
  for j = 2, #f, 2 do amounts[f[j]] = tonumber(f[j + 1]) end
else
  -- A hash: a hold of a version before holds were strings, in the index
  -- of a replica of that version that left during a rolling upgrade.
  local h = redis.call('HGETALL', KEYS[1])
  if #h == 0 then return 0 end
  for j = 1, #h, 2 do
    if h[j] == '@' then by = h[j + 1] else amounts[h[j]] = tonumber(h[j + 1]) end
  end
end
if ARGV[1] ~= '' and by ~= ARGV[1] then return 0 end
for k, amount in pairs(amounts) do
  local v = redis.call('GET', k)
  if v and string.match(v, '^%d+$') then
    redis.call('SET', k, string.format('%d', math.max(0, tonumber(v) - amount)), 'KEEPTTL')
  end
end
redis.call('DEL', KEYS[1])
return 1
`)

// contributeScript adds a replica's part to a budget's spend once per
// incarnation of the key: KEYS[1] is the budget, KEYS[2] the set of the
// instances whose part it holds, KEYS[3] when the database's sum in it
// was taken (microseconds of the replicas' clocks), KEYS[4] the set of
// the request_ids parts named. ARGV[1] is the instance, ARGV[2] its part
// in sums (records not known by request_id, and what its holds hold),
// ARGV[3] the database's sum ("" when not read yet), ARGV[4] the keys'
// expiry in milliseconds, ARGV[5] when that sum was taken, ARGV[6] the
// start of the charged markers' keys and ARGV[7] their expiry; then
// triples of a request_id, when the record was stored (0 for one not
// stored yet) and its cost: each counts once whichever replicas name
// it, and one stored counts only if stored after the sum was taken. Each
// gets the charged marker "p" unless it has one. A key that is
// missing is created from the database's sum and the part (a key that
// went alone, evicted or deleted, forgets its parts); without the sum it
// answers -2. It returns {1 when the part was added now, 0 when it was
// already, or -2; the spend}.
var contributeScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
elseif redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return {0, v}
end
local s, at
if v then
  s = tonumber(v)
  at = tonumber(redis.call('GET', KEYS[3]) or '0')
else
  if ARGV[3] == '' then return {-2, '0'} end
  s = tonumber(ARGV[3])
  at = tonumber(ARGV[5])
  redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[4])
end
s = s + tonumber(ARGV[2])
local named = false
for j = 8, #ARGV, 3 do
  -- A copy of it charged later is charged to the other buckets only.
  if ARGV[j] ~= '' then redis.call('SET', ARGV[6] .. ARGV[j], 'p', 'NX', 'PX', ARGV[7]) end
  local stored = tonumber(ARGV[j + 1])
  if stored == 0 or stored > at then
    if ARGV[j] == '' then
      s = s + tonumber(ARGV[j + 2])
    elseif redis.call('SADD', KEYS[4], ARGV[j]) == 1 then
      s = s + tonumber(ARGV[j + 2])
      named = true
    end
  end
end
if named then redis.call('PEXPIRE', KEYS[4], ARGV[4]) end
s = string.format('%d', math.min(math.max(0, s), 9007199254740992))
if v then
  redis.call('SET', KEYS[1], s, 'KEEPTTL')
else
  redis.call('SET', KEYS[1], s, 'PX', ARGV[4])
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {1, s}
`)

// reseedScript puts back the level a replica last saw in token bucket
// KEYS[1] after Redis lost it: ARGV[1] the level, ARGV[2] the capacity,
// ARGV[3] the refill per microsecond. Of several replicas' levels the
// lowest (the most used) wins; a bucket that is lower already is kept.
var reseedScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cap, rate, mine = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[1])
local v = redis.call('GET', KEYS[1])
if v then
  local l, lt = string.match(v, '^(%S+) (%S+) ')
  local level = math.min(cap, tonumber(l) + math.max(0, now - tonumber(lt)) * rate)
  if level <= mine then return 0 end
end
if mine >= cap then return 0 end
local ttl = math.min(math.ceil((cap - mine) / rate / 1000) + 1000, 3153600000000)
redis.call('SET', KEYS[1], string.format('%.17g %.17g ', mine, now) .. ARGV[3], 'PX', string.format('%d', ttl))
return 1
`)

// reholdScript puts back a hold after Redis lost it, or registers one
// made while Redis was out of reach, without debiting anything (the
// buckets already count it): KEYS[1] the hold, KEYS[2] the charged
// marker, ARGV[1] the instance, ARGV[2] the hold's expiry in
// milliseconds, then pairs of bucket key and amount. A request_id
// already charged gets no hold.
var reholdScript = redis.NewScript(holdLua + `
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local f = {holdField(ARGV[1])}
for j = 3, #ARGV do f[#f + 1] = holdField(ARGV[j]) end
if redis.call('SET', KEYS[1], table.concat(f), 'NX', 'PX', ARGV[2]) then return 1 end
return 0
`)

// holdLua reads and writes a hold: one string of fields, each its length,
// a colon and its bytes (a bucket key may hold any byte): the instance
// that made it, then each bucket key and what it holds there. One SET PX
// writes it where a hash took HSET and PEXPIRE, and the bucket script
// reads it in the MGET that reads the buckets.
const holdLua = `
local function holdField(s) return #s .. ':' .. s end
local function holdFields(v)
  local out, pos = {}, 1
  while pos <= #v do
    local c = string.find(v, ':', pos, true)
    local len = tonumber(string.sub(v, pos, c - 1))
    out[#out + 1] = string.sub(v, c + 1, c + len)
    pos = c + len + 1
  end
  return out
end
`

// noRetry is a command go-redis must not send twice: a script whose
// connection is lost after it was written may have run, and no call of
// the bucket script is idempotent. (MaxRetries reaches a cluster's
// per-node clients only: the cluster client retries on its own.)
type noRetry struct{ *redis.Cmd }

// NoRetry implements redis.Cmder.
func (noRetry) NoRetry() bool { return true }

// runBucketScript runs the bucket script by EVALSHA, and by EVAL when
// Redis does not know it (a restart, a new cluster node), never retried.
// cmdArgs are the command's, its first two (the command and the script)
// left for it to fill: the number of keys, the keys, the arguments.
func runBucketScript(ctx context.Context, c redis.UniversalClient, cmdArgs []any) *redis.Cmd {
	cmdArgs[0], cmdArgs[1] = "evalsha", bucketScript.Hash()
	cmd := redis.NewCmd(ctx, cmdArgs...)
	_ = c.Process(ctx, noRetry{cmd})
	if err := cmd.Err(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
		cmdArgs[0], cmdArgs[1] = "eval", bucketSource
		cmd = redis.NewCmd(ctx, cmdArgs...)
		_ = c.Process(ctx, noRetry{cmd})
	}
	return cmd
}
