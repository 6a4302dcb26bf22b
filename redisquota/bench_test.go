package redisquota

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/clock"
	"github.com/llmusage/llmusage/internal/redistest"
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

// BenchmarkExactOnRedis is what exactness costs per call on a real
// Redis, with the epoch checked as a registered replica does: a check
// without and with a request_id (which holds its estimate), and a record
// without and with a request_id (which settles the hold and leaves a
// charged marker); B/marker is the Redis memory each charged marker
// takes until it expires.
func BenchmarkExactOnRedis(b *testing.B) {
	srv, client := standalone(b)
	rules := []limiter.Rule{{Window: limiter.Minute, Unit: limiter.Requests, Limit: 1 << 40}, {Window: limiter.Month, Unit: limiter.USD, Limit: limiter.MaxLimit}}
	s := New(Options{Client: client, FailMode: FailClosed, ReplicaID: "bench", Timeout: time.Second})
	if err := s.register(b.Context()); err != nil {
		b.Fatal(err)
	}
	l, err := limiter.New(rules, limiter.Options{Clock: clock.NewManual(time.Now()), Store: s})
	if err != nil {
		b.Fatal(err)
	}
	ids := func(prefix string) func() string {
		n := 0
		return func() string { n++; return prefix + strconv.Itoa(n) }
	}
	b.Run("check", func(b *testing.B) {
		req := limiter.Request{UserID: "alice", Model: "gpt-4o", Cost: 1}
		for b.Loop() {
			if d, err := l.Check(req); err != nil || !d.Allowed {
				b.Fatalf("%+v %v", d, err)
			}
		}
	})
	b.Run("check+hold", func(b *testing.B) {
		next := ids("h" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-")
		for b.Loop() {
			if d, err := l.Check(limiter.Request{UserID: "alice", Model: "gpt-4o", Cost: 1, RequestID: next()}); err != nil || !d.Allowed {
				b.Fatalf("%+v %v", d, err)
			}
		}
	})
	b.Run("record", func(b *testing.B) {
		u := limiter.Usage{UserID: "bob", Model: "gpt-4o", Cost: 1, HasCost: true, Timestamp: time.Now()}
		for b.Loop() {
			if err := l.Record(u); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("record+marker", func(b *testing.B) {
		next := ids("r" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-") // new markers each run
		before := usedMemory(b, srv)
		n := 0
		for b.Loop() {
			if err := l.Record(limiter.Usage{UserID: "bob", Model: "gpt-4o", Cost: 1, HasCost: true, Timestamp: time.Now(), RequestID: next()}); err != nil {
				b.Fatal(err)
			}
			n++
		}
		b.ReportMetric(float64(usedMemory(b, srv)-before)/float64(n), "B/marker")
	})
}

// usedMemory is Redis's used_memory.
func usedMemory(b *testing.B, srv *redistest.Server) int64 {
	for _, line := range strings.Split(srv.Do(b, "INFO", "memory"), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	b.Fatal("no used_memory in INFO memory")
	return 0
}

// BenchmarkPoolCheckOnRedis is a check of a user's request bucket alone
// against one of the user's bucket and a shared pool (per: all), which
// takes a second script call (the pool's keys live apart from the
// user's); without and with a request_id (holds). Each check is another
// user's, as in a fleet; the pool is one key all of them share.
func BenchmarkPoolCheckOnRedis(b *testing.B) {
	srv, client := standalone(b)
	user := limiter.Rule{Window: limiter.Minute, Unit: limiter.Requests, Limit: 1 << 40}
	pool := limiter.Rule{Window: limiter.Minute, Unit: limiter.Requests, Limit: 1 << 40, Per: limiter.PerAll}
	for _, c := range []struct {
		name  string
		rules []limiter.Rule
		ids   bool
	}{
		{"user", []limiter.Rule{user}, false},
		{"user+pool", []limiter.Rule{user, pool}, false},
		{"user/request_id", []limiter.Rule{user}, true},
		{"user+pool/request_id", []limiter.Rule{user, pool}, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			s := New(Options{Client: client, FailMode: FailClosed, ReplicaID: "bench", Timeout: time.Second})
			l, err := limiter.New(c.rules, limiter.Options{Clock: clock.NewManual(time.Now()), Store: s})
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			srv.Do(b, "CONFIG", "RESETSTAT")
			b.ReportAllocs()
			for b.Loop() {
				n++
				req := limiter.Request{UserID: "user-" + strconv.Itoa(n%1000), Provider: "groq", Model: "llama"}
				if c.ids {
					req.RequestID = "bench-" + c.name + strconv.Itoa(n)
				}
				if d, err := l.Check(req); err != nil || !d.Allowed {
					b.Fatalf("%+v %v", d, err)
				}
			}
			// The time Redis spent in the scripts per check: one Redis
			// serves about 1e6 / this checks a second.
			b.ReportMetric(scriptMicros(b, srv)/float64(n), "redis-us/op")
		})
	}
}

// scriptMicros is the microseconds Redis spent running scripts since
// its statistics were reset.
func scriptMicros(b *testing.B, srv *redistest.Server) float64 {
	var total float64
	for _, line := range strings.Split(srv.Do(b, "INFO", "commandstats"), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "cmdstat_evalsha:") && !strings.HasPrefix(line, "cmdstat_eval:") {
			continue
		}
		for _, field := range strings.Split(line[strings.IndexByte(line, ':')+1:], ",") {
			if v, ok := strings.CutPrefix(field, "usec="); ok {
				n, _ := strconv.ParseFloat(v, 64)
				total += n
			}
		}
	}
	return total
}

// BenchmarkCallWithConcurrencyOnRedis is one call's check and record on
// Redis, with their request_id, under a minute bucket alone against the
// same with a concurrency limit: the slot is a hold in a budget of
// slots, taken by the check's script and given back by the record's.
func BenchmarkCallWithConcurrencyOnRedis(b *testing.B) {
	srv, client := standalone(b)
	minute := limiter.Rule{Window: limiter.Minute, Unit: limiter.Requests, Limit: 1 << 40}
	slots := limiter.Rule{Window: limiter.InFlight, Unit: limiter.Concurrent, Limit: 8}
	for _, c := range []struct {
		name  string
		rules []limiter.Rule
	}{{"minute", []limiter.Rule{minute}}, {"minute+concurrent", []limiter.Rule{minute, slots}}} {
		b.Run(c.name, func(b *testing.B) {
			s := New(Options{Client: client, FailMode: FailClosed, ReplicaID: "bench", Timeout: time.Second})
			l, err := limiter.New(c.rules, limiter.Options{Clock: clock.NewManual(time.Now()), Store: s})
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			srv.Do(b, "CONFIG", "RESETSTAT")
			b.ReportAllocs()
			for b.Loop() {
				n++
				user := "user-" + strconv.Itoa(n%100)
				id := "call-" + c.name + strconv.Itoa(n)
				if d, err := l.Check(limiter.Request{UserID: user, RequestID: id}); err != nil || !d.Allowed {
					b.Fatalf("%+v %v", d, err)
				}
				if err := l.Record(limiter.Usage{UserID: user, RequestID: id, Tokens: 10}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(scriptMicros(b, srv)/float64(n), "redis-us/op")
		})
	}
}
