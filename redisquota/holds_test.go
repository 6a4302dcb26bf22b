package redisquota

import (
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
