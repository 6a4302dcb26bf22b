package limiter

import (
	"fmt"
	"runtime"
	"strings"
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
	var limits []Status
	for i := 0; i < b.N; i++ {
		d, err := l.CheckInto(req, limits)
		if err != nil || !d.Allowed {
			b.Fatalf("unexpected decision: %+v, %v", d, err)
		}
		limits = d.Limits
	}
}

// BenchmarkCheckAllocating is Check as the HTTP handler calls it, with a
// fresh Limits slice per call, for comparison with CheckInto.
func BenchmarkCheckAllocating(b *testing.B) {
	l := newBenchLimiter(b)
	req := Request{UserID: "alice", Provider: "openai", Model: "gpt-4o"}
	b.ReportAllocs()
	for b.Loop() {
		if d, err := l.Check(req); err != nil || !d.Allowed {
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
		var limits []Status
		for pb.Next() {
			d, err := l.CheckInto(req, limits)
			limits = d.Limits
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
		var limits []Status
		for pb.Next() {
			req.UserID = users[i]
			d, err := l.CheckInto(req, limits)
			limits = d.Limits
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

// BenchmarkMemoryPerActiveUser reports the heap held per user with a
// live bucket under the seed's default rules (30 requests a minute, 14,400
// a day), user IDs included: the bytes/user metric, not ns/op, is the
// figure.
func BenchmarkMemoryPerActiveUser(b *testing.B) {
	const users = 100_000
	ids := make([]string, users)
	for i := range ids {
		ids[i] = fmt.Sprintf("user-%08d", i)
	}
	var perUser float64
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		l, err := New([]Rule{
			{Window: Minute, Unit: Requests, Limit: 30},
			{Window: Day, Unit: Requests, Limit: 14400},
		}, Options{})
		if err != nil {
			b.Fatal(err)
		}
		for _, id := range ids {
			l.Record(Usage{UserID: strings.Clone(id), Model: "gpt-4o"})
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if l.Len() != 2*users {
			b.Fatalf("%d buckets", l.Len())
		}
		perUser = float64(after.HeapAlloc-before.HeapAlloc) / users
		runtime.KeepAlive(l)
	}
	b.ReportMetric(perUser, "bytes/user")
}

// BenchmarkCheckBudget is CheckHotUser with a month usd budget beside
// the two request buckets, each check reserving an estimated cost.
func BenchmarkCheckBudget(b *testing.B) {
	l := mustNew(b, append(benchRules(), Rule{Window: Month, Unit: USD, Limit: MaxLimit, Source: "budget"}), Options{Clock: newManualClock()})
	req := Request{UserID: "alice", Provider: "openai", Model: "gpt-4o", Cost: 1}
	b.ReportAllocs()
	var limits []Status
	for b.Loop() {
		d, err := l.CheckInto(req, limits)
		if err != nil || !d.Allowed {
			b.Fatalf("unexpected decision: %+v, %v", d, err)
		}
		limits = d.Limits
	}
}

// BenchmarkCheckWithPool is a check of a user bucket alone against one
// of a user bucket and a shared pool (per: all), which the check takes
// after the user's, from another shard; and the pool when many users
// check at once, each on its own goroutine.
func BenchmarkCheckWithPool(b *testing.B) {
	user := Rule{Window: Minute, Unit: Requests, Limit: 1 << 40}
	pool := Rule{Window: Minute, Unit: Requests, Limit: 1 << 40, Per: PerAll}
	for _, c := range []struct {
		name  string
		rules []Rule
	}{{"user", []Rule{user}}, {"user+pool", []Rule{user, pool}}} {
		b.Run(c.name, func(b *testing.B) {
			l := mustNew(b, c.rules, Options{Clock: newManualClock()})
			req := Request{UserID: "alice", Provider: "groq", Model: "llama"}
			var limits []Status
			b.ReportAllocs()
			for b.Loop() {
				d, err := l.CheckInto(req, limits)
				if err != nil || !d.Allowed {
					b.Fatalf("%+v %v", d, err)
				}
				limits = d.Limits
			}
		})
		b.Run(c.name+"/parallel-users", func(b *testing.B) {
			l := mustNew(b, c.rules, Options{Clock: newManualClock()})
			var next atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				req := Request{UserID: fmt.Sprintf("user-%d", next.Add(1)), Provider: "groq", Model: "llama"}
				var limits []Status
				for pb.Next() {
					d, err := l.CheckInto(req, limits)
					if err != nil || !d.Allowed {
						b.Fatalf("%+v %v", d, err)
					}
					limits = d.Limits
				}
			})
		})
	}
}

// BenchmarkCallWithConcurrency is one call's check and record (with its
// request_id, as a concurrency limit needs) under a minute bucket alone,
// against the same with a concurrency limit, whose slot the check takes
// and the record gives back.
func BenchmarkCallWithConcurrency(b *testing.B) {
	minute := Rule{Window: Minute, Unit: Requests, Limit: 1 << 40}
	slots := Rule{Window: InFlight, Unit: Concurrent, Limit: 8}
	for _, c := range []struct {
		name  string
		rules []Rule
	}{{"minute", []Rule{minute}}, {"minute+concurrent", []Rule{minute, slots}}} {
		b.Run(c.name, func(b *testing.B) {
			l := mustNew(b, c.rules, Options{Clock: newManualClock()})
			ids := make([]string, 1024)
			for i := range ids {
				ids[i] = fmt.Sprintf("call-%d", i)
			}
			var limits []Status
			n := 0
			b.ReportAllocs()
			for b.Loop() {
				id := ids[n%len(ids)]
				n++
				d, err := l.CheckInto(Request{UserID: "alice", Provider: "groq", Model: "llama", RequestID: id}, limits)
				if err != nil || !d.Allowed {
					b.Fatalf("%+v %v", d, err)
				}
				limits = d.Limits
				if err := l.Record(Usage{UserID: "alice", Provider: "groq", Model: "llama", RequestID: id, Tokens: 10}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
