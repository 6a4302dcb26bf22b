package redisquota

import (
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/limiter"
)

// BenchmarkCheckOnRedis is one check through the limiter on a real
// Redis: the seed's two request buckets, and the same with a month usd
// budget beside them (one more key in the same script call).
func BenchmarkCheckOnRedis(b *testing.B) {
	_, client := standalone(b)
	rules := []limiter.Rule{{Window: limiter.Minute, Unit: limiter.Requests, Limit: 1 << 40}, {Window: limiter.Day, Unit: limiter.Requests, Limit: 1 << 40}}
	for _, c := range []struct {
		name  string
		rules []limiter.Rule
	}{
		{"requests", rules},
		{"requests+budget", append(rules, limiter.Rule{Window: limiter.Month, Unit: limiter.USD, Limit: limiter.MaxLimit})},
	} {
		b.Run(c.name, func(b *testing.B) {
			s := New(Options{Client: client, FailMode: FailClosed, ReplicaID: "bench", Timeout: time.Second})
			l, err := limiter.New(c.rules, limiter.Options{Clock: clock.NewManual(time.Now()), Store: s})
			if err != nil {
				b.Fatal(err)
			}
			req := limiter.Request{UserID: "alice", Model: "gpt-4o", Cost: 1}
			b.ReportAllocs()
			for b.Loop() {
				if d, err := l.Check(req); err != nil || !d.Allowed {
					b.Fatalf("%+v %v", d, err)
				}
			}
		})
	}
}
