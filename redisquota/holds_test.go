package redisquota

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llmusage/llmusage/limiter"
)

// TestHoldIndex: holds by user and request_id, counted once each, summed
// by bucket for one user only, and marked as in Redis one by one.
func TestHoldIndex(t *testing.T) {
	var x holdIndex
	x.init()
	day := limiter.Bucket{Scope: &limiter.Scope{Window: limiter.Day, Unit: limiter.USD}, Limit: dollar, Period: limiter.Period{Start: 1, End: 2}}
	req := bucket(limiter.Requests, 10, "")
	exp := time.Now().Add(time.Minute)
	x.put("alice", "r1", []limiter.Bucket{req, day}, []int64{1, 30}, exp, false)
	x.put("alice", "r1", []limiter.Bucket{req, day}, []int64{1, 20}, exp, false) // sent again
	x.put("alice", "r2", []limiter.Bucket{day}, []int64{5}, exp, true)
	x.put("bob", "r1", []limiter.Bucket{day}, []int64{7}, exp, true)
	if n := x.len(); n != 3 {
		t.Fatalf("%d holds, want 3", n)
	}
	// r1 was taken in Redis: its debit is in the key, which a part must
	// not count again, until Redis loses it.
	if got := x.heldIn("alice", day); got != 5 {
		t.Fatalf("alice holds %d in her day budget that its key lacks, want 5 (r2, local)", got)
	}
	x.forgetLoss()
	if got := x.heldIn("alice", day); got != 25 {
		t.Fatalf("alice holds %d in her day budget after Redis lost it, want 25", got)
	}
	local := x.all(true)
	if len(local) != 2 {
		t.Fatalf("%d local holds, want 2", len(local))
	}
	x.markRedis(local[:1])
	if n := len(x.all(true)); n != 1 {
		t.Fatalf("%d local holds after one was put in Redis, want 1", n)
	}
	x.drop("alice", "r1")
	x.drop("alice", "r1")
	x.drop("alice", "r2")
	if n, users := x.len(), x.users(); n != 1 || len(users) != 1 || len(users["bob"]) != 1 {
		t.Fatalf("after drops: %d holds, users %v; want bob's one", n, users)
	}
	if got := x.expired(exp.Add(time.Second)); len(got) != 1 || got[0].user != "bob" {
		t.Fatalf("expired %+v, want bob's", got)
	}
}

// TestHoldFormatAcrossReaders: a hold is one string whose fields are
// length-prefixed, so a user whose name holds colons, spaces and digits
// has it read back by each reader: the record on another replica
// settles it after a recovery put it back, and the release of a replica
// that left gives it back, as it does a hold of the former format (a
// hash) that a replica of that version left in its index.
func TestHoldFormatAcrossReaders(t *testing.T) {
	stores, ls, _, _, clk, flush := exactReplicas(t, 3)
	const user = "9:u: x=1 2:"
	c := stores[0].opts.Client
	usdLeft := func(l *limiter.Limiter) int64 {
		t.Helper()
		st, err := l.Limits(user, "", "", "m")
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st {
			if s.Unit == limiter.USD {
				return s.Remaining
			}
		}
		t.Fatal("no USD limit")
		return 0
	}
	check := func(l *limiter.Limiter, id string, cost int64) {
		t.Helper()
		if d, err := l.Check(limiter.Request{UserID: user, Model: "m", Cost: cost, RequestID: id}); err != nil || !d.Allowed {
			t.Fatal(d, err)
		}
	}
	check(ls[0], "r1", dollar/2)
	if typ := c.Type(t.Context(), stores[0].holdKey(user, "r1")).Val(); typ != "string" {
		t.Fatalf("the hold is a %s, want a string", typ)
	}
	// The index's expiry comes from the registration.
	if err := stores[0].register(t.Context()); err != nil {
		t.Fatal(err)
	}
	if ttl := c.PTTL(t.Context(), stores[0].holdIndexKey(stores[0].instance)).Val(); ttl <= stores[0].opts.HoldTTL {
		t.Fatalf("the index expires in %v after a registration, want past the hold's %v", ttl, stores[0].opts.HoldTTL)
	}
	flush()
	for _, l := range ls {
		usdLeft(l) // each recovers; replica 0 puts its hold back
	}
	if got := usdLeft(ls[1]); got != dollar/2 {
		t.Fatalf("after Redis lost its state: $%d left, want $0.50 held", got)
	}
	if err := ls[1].Record(limiter.Usage{UserID: user, Model: "m", RequestID: "r1", Cost: dollar / 10, HasCost: true, Timestamp: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if got := usdLeft(ls[1]); got != dollar-dollar/10 {
		t.Fatalf("after the record settled the put-back hold: $%d left, want $0.90", got)
	}
	check(ls[0], "r2", dollar/5)
	check(ls[2], "r3", dollar/5)
	// Replica 2's hold as a replica of the former version wrote it: a
	// hash named "h:", in its index.
	newKey := stores[2].holdKey(user, "r3")
	fields := parseHold(t, c.Get(t.Context(), newKey).Val())
	oldKey := stores[2].userTag(user) + "h:r3"
	if err := c.HSet(t.Context(), oldKey, append([]any{"@"}, fields...)...).Err(); err != nil {
		t.Fatal(err)
	}
	index := stores[2].holdIndexKey(stores[2].instance)
	c.Del(t.Context(), newKey)
	c.SRem(t.Context(), index, newKey)
	c.SAdd(t.Context(), index, oldKey)
	if got := usdLeft(ls[1]); got != dollar-dollar/10-2*dollar/5 {
		t.Fatalf("with two holds: $%d left, want $0.50", got)
	}
	// Replicas 0 and 2 die: their last registrations are older than replicaTTL.
	for _, s := range []*Store{stores[0], stores[2]} {
		if err := c.ZAdd(t.Context(), stores[1].globalKey("replicas"), redisZ(0, s.instance)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := stores[1].register(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := usdLeft(ls[1]); got != dollar-dollar/10 {
		t.Fatalf("after the replicas holding $0.40 left: $%d left, want $0.90", got)
	}
	if n := c.Exists(t.Context(), oldKey, stores[0].holdKey(user, "r2")).Val(); n != 0 {
		t.Fatalf("%d holds left in Redis after their replicas left, want 0", n)
	}
}

// parseHold reads a hold's fields (the instance, then bucket keys and
// amounts), each its length, a colon and its bytes.
func parseHold(t *testing.T, v string) []any {
	t.Helper()
	var out []any
	for v != "" {
		n, rest, ok := strings.Cut(v, ":")
		size, err := strconv.Atoi(n)
		if !ok || err != nil || size > len(rest) {
			t.Fatalf("cannot read the hold %q", v)
		}
		out = append(out, rest[:size])
		v = rest[size:]
	}
	if len(out)%2 != 1 {
		t.Fatalf("the hold has %d fields, want the instance and pairs", len(out))
	}
	return out
}
