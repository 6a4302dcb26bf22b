package limiter

import (
	"fmt"
	"sync/atomic"
	"testing"
)

// benchRules are the default rules (30 requests a minute, 14400 a day) with
// limits large enough that every check passes however long a benchmark runs.
func benchRules() []Rule {
	return []Rule{
		{Window: Minute, Unit: Requests, Limit: 1 << 40, Source: "default"},
		{Window: Day, Unit: Requests, Limit: 1 << 40, Source: "default"},
	}
}

func newBenchLimiter(b *testing.B) *Limiter {
	b.Helper()
	return mustNew(b, benchRules(), Options{Clock: newManualClock()})
}

func BenchmarkCheckHotUser(b *testing.B) {
	l := newBenchLimiter(b)
	req := Request{UserID: "alice", Provider: "openai", Model: "gpt-4o"}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, err := l.Check(req)
		if err != nil || !d.Allowed {
			b.Fatalf("unexpected decision: %+v, %v", d, err)
		}
	}
}

func BenchmarkCheckHotUserParallel(b *testing.B) {
	l := newBenchLimiter(b)
	req := Request{UserID: "alice", Provider: "openai", Model: "gpt-4o"}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			d, err := l.Check(req)
			if err != nil || !d.Allowed {
				b.Errorf("unexpected decision: %+v, %v", d, err)
				return
			}
		}
	})
}

func BenchmarkCheck100kUsersParallel(b *testing.B) {
	const numUsers = 100_000
	users := make([]string, numUsers)
	for i := range users {
		users[i] = fmt.Sprintf("user-%06d", i)
	}
	l := newBenchLimiter(b)
	var worker atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		// Every goroutine walks the users from its own offset.
		i := int(worker.Add(1)*7919) % numUsers
		req := Request{Provider: "openai", Model: "gpt-4o"}
		for pb.Next() {
			req.UserID = users[i]
			d, err := l.Check(req)
			if err != nil || !d.Allowed {
				b.Errorf("unexpected decision: %+v, %v", d, err)
				return
			}
			i++
			if i == numUsers {
				i = 0
			}
		}
	})
}

func BenchmarkRecord(b *testing.B) {
	l := mustNew(b, append(benchRules(),
		Rule{Window: Minute, Unit: Tokens, Limit: 1 << 40},
		Rule{Window: Day, Unit: Tokens, Limit: 1 << 40},
	), Options{Clock: newManualClock()})
	u := Usage{UserID: "alice", Provider: "openai", Model: "gpt-4o", Tokens: 1000}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l.Record(u)
	}
}
