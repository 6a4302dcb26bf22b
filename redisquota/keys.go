package redisquota

import (
	"errors"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llmusage/llmusage/limiter"
)

// globalKey names a key of the whole fleet; they share a hash tag, so
// that a Redis Cluster keeps them in one slot.
func (s *Store) globalKey(name string) string { return s.opts.Prefix + ":{g}:" + name }

// holdKey names the hold of user's check id, in the user's slot. ("h:"
// named a hold that was a hash: a replica of that version finds none
// under this name, rather than failing on a string, during a rolling
// upgrade.)
func (s *Store) holdKey(user, id string) string { return s.userTag(user) + "hs:" + id }

// chargedKey names the marker of user's record id charged.
func (s *Store) chargedKey(user, id string) string { return s.userTag(user) + "c:" + id }

// holdIndexKey names the set of the holds instance made.
func (s *Store) holdIndexKey(instance string) string { return s.globalKey("holds:" + instance) }

// budgetKey names a budget's spend in its current period: a new period
// is a new key, which starts unknown, and the old one expires.
func budgetKey(user string, b limiter.Bucket) string {
	return scopeKey(user, b.Scope) + ":" + strconv.FormatInt(b.Period.Start, 10)
}

// budgetTTL keeps a budget's key an hour past its period, in
// milliseconds: replicas whose clocks lag still find it. A concurrency
// limit's key, whose period never ends, lives a minute past the longest
// hold in it: the bucket script sets that again at each write, so the
// key outlives every slot taken in it, and goes once none was for that
// long.
func (s *Store) budgetTTL(b limiter.Bucket, now time.Time) int64 {
	if b.IsConcurrency() {
		return (s.opts.HoldTTL + time.Minute).Milliseconds()
	}
	return max(1, time.Unix(b.Period.End, 0).Add(time.Hour).Sub(now).Milliseconds())
}

func isUnknownSpend(err error) bool {
	var unknown *limiter.UnknownSpendError
	return errors.As(err, &unknown)
}

// userTag starts the keys of one user's buckets: the prefix and a hash
// tag of the user, so that a Redis Cluster keeps them in one slot. The
// tag is a hash rather than the user itself, since a user_id may hold
// the braces that delimit a tag.
func (s *Store) userTag(user string) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(user))
	return s.opts.Prefix + ":{" + strconv.FormatUint(h.Sum64(), 16) + "}:"
}

// scopeKey names a bucket unambiguously: each free-form part is
// length-prefixed, so that no user, provider or model holding a colon
// can make two buckets one.
func scopeKey(user string, sc *limiter.Scope) string {
	var b strings.Builder
	b.WriteString(sc.Window.String())
	b.WriteByte(':')
	b.WriteString(sc.Unit.String())
	for _, part := range []string{user, sc.Provider, sc.Model} {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(len(part)))
		b.WriteByte(':')
		b.WriteString(part)
	}
	// A team scope comes last, so that the keys of rules without one
	// stay as they were. A pool's owner (which starts with NUL) tells
	// whose it is; the rule's level follows from it.
	if sc.TeamID != "" {
		b.WriteString(":t:")
		b.WriteString(strconv.Itoa(len(sc.TeamID)))
		b.WriteByte(':')
		b.WriteString(sc.TeamID)
	}
	return b.String()
}

// parseResult reads the bucket script's answer: {allowed, now, level...}.
func parseResult(cmd *redis.Cmd, n int) ([]float64, error) {
	vals, err := cmd.Slice()
	if err != nil {
		return nil, err
	}
	return parseValues(vals, n)
}
