package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/internal/redistest"
	"github.com/llmusage/llmusage/internal/sidecartest"
)

// replicas starts n sidecars sharing one Redis (or cluster) URL. Unless
// flags set one, the Redis timeout is 2 s rather than 50 ms: on this
// shared two-core machine, under the race detector, a call can take
// longer than 50 ms, and a check answered by the fail mode is exact no
// more. The exactness tests say so (assertNoFallback); TestRedisOutage
// measures the fail mode with the default.
func replicas(t *testing.T, n int, limits string, flags ...string) []*sidecartest.Sidecar {
	t.Helper()
	if !slices.Contains(flags, "--redis-timeout") {
		flags = append(flags, "--redis-timeout", "2s")
	}
	return sidecartest.StartN(t, n, sidecartest.Options{Limits: limits, Flags: flags})
}

// assertNoFallback fails t if a sidecar answered a check without Redis.
func assertNoFallback(t *testing.T, sidecars []*sidecartest.Sidecar) {
	t.Helper()
	for i, s := range sidecars {
		metrics := s.Scrape(t)
		if strings.Contains(metrics, "llmusage_quota_fallback_checks_total{") || sidecartest.Value(metrics, "llmusage_quota_backend_up") != 1 {
			t.Fatalf("sidecar %d answered checks without Redis: the figures are not those of the shared buckets\n%s\n%s", i, grepLines(metrics, "llmusage_quota"), s.Log())
		}
	}
}

// hammer sends checks for user from conns goroutines, each keeping its
// own connection and going round-robin over the sidecars, for d. It
// returns the checks allowed, the tokens they reserved, and the time from
// the first check to the last.
func hammer(t *testing.T, sidecars []*sidecartest.Sidecar, conns int, d time.Duration, user string, tokens int) (allowed, reserved int64, elapsed time.Duration) {
	t.Helper()
	var ok, other, total atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < conns; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 5 * time.Second}
			body := fmt.Sprintf(`{"user_id": %q, "model": "gpt-4o", "tokens": %d}`, user, tokens)
			for i := c; time.Since(start) < d; i++ {
				resp, err := client.Post(sidecars[i%len(sidecars)].APIURL()+"/v1/check", "application/json", strings.NewReader(body))
				if err != nil {
					other.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				total.Add(1)
				switch resp.StatusCode {
				case http.StatusOK:
					ok.Add(1)
				case http.StatusTooManyRequests:
				default:
					other.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed = time.Since(start)
	if other.Load() > 0 {
		t.Fatalf("%d checks failed or got neither 200 nor 429", other.Load())
	}
	t.Logf("%d checks over %d sidecars from %d connections in %s: %d allowed", total.Load(), len(sidecars), conns, elapsed.Round(time.Millisecond), ok.Load())
	return ok.Load(), ok.Load() * int64(tokens), elapsed
}

// assertAdmitted holds admitted to capacity plus the refill over elapsed:
// never more, and at most one fewer (a refill that came due between the
// last checks).
func assertAdmitted(t *testing.T, what string, admitted, capacity int64, perMinute float64, elapsed time.Duration) {
	t.Helper()
	bound := float64(capacity) + perMinute*elapsed.Minutes()
	if float64(admitted) > bound {
		t.Fatalf("%s: admitted %d, over capacity %d + refill over %s = %.2f", what, admitted, capacity, elapsed.Round(time.Millisecond), bound)
	}
	if float64(admitted) < math.Floor(bound)-1 {
		t.Fatalf("%s: admitted %d, under capacity + refill %.2f by more than 1", what, admitted, bound)
	}
}

func TestReplicasShareOneLimit(t *testing.T) {
	srv := redistest.Start(t)
	sidecars := replicas(t, 3, "limits:\n  - limit_type: minute\n    requests: 20\n", "--redis-url", srv.URL())
	admitted, _, elapsed := hammer(t, sidecars, 6, 10*time.Second, "alice", 0)
	assertNoFallback(t, sidecars)
	assertAdmitted(t, "3 sidecars, 20 requests a minute", admitted, 20, 20, elapsed)

	// Every replica reports the shared bucket, in its answers and in its
	// quota gauges: all agree (within the refill between two reads).
	series := `llm_quota_remaining{limit_type="minute",model="",per="user",provider="",team="",unit="requests",user="alice"}`
	var gauges []float64
	for i, s := range sidecars {
		code, body := s.Get(t, "/v1/limits?user_id=alice")
		limits, _ := body["limits"].([]any)
		if code != http.StatusOK || len(limits) != 1 || limits[0].(map[string]any)["remaining"].(float64) > 4 {
			t.Fatalf("sidecar %d: /v1/limits %d %v, want the shared bucket nearly empty", i, code, body)
		}
		gauges = append(gauges, s.Gauge(series))
	}
	for _, g := range gauges {
		if g < 0 || g > 4 || math.Abs(g-gauges[0]) > 1 {
			t.Fatalf("llm_quota_remaining for alice on the three sidecars: %v, want one shared value near 0", gauges)
		}
	}
}

// TestRedisPasswordNotLogged starts a sidecar whose Redis needs a
// password and is out of reach: it serves (checks go to the fail mode),
// and neither its log nor /readyz shows the password.
func TestRedisPasswordNotLogged(t *testing.T) {
	s := sidecartest.Start(t, sidecartest.Options{Limits: "limits:\n  - limit_type: minute\n    requests: 5\n",
		Flags: []string{"--redis-url", "redis://llmusage:s3cret-pw@127.0.0.1:1/0"}})
	if code, _, body := s.PostJSON(t, "/v1/check", `{"user_id": "alice", "model": "gpt-4o"}`); code != http.StatusOK {
		t.Fatalf("check with Redis out of reach: %d %v, want the local fail mode to allow it", code, body)
	}
	resp, err := s.Client.Get(s.MetricsURL() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	code, _, body := sidecartest.DecodeJSON(t, resp)
	if code != http.StatusOK || body["status"] != "degraded" {
		t.Fatalf("/readyz: %d %v, want 200 degraded", code, body)
	}
	if strings.Contains(s.Log()+fmt.Sprint(body), "s3cret-pw") {
		t.Fatalf("the Redis password appears:\n%s\n%v", s.Log(), body)
	}
	if !strings.Contains(s.Log(), "redis://llmusage:xxxxx@127.0.0.1:1/0") {
		t.Fatalf("the redacted Redis URL is not logged:\n%s", s.Log())
	}
	// A URL that does not parse: the error says so, without the password,
	// however it is escaped.
	for _, pw := range []string{`s3cr"et`, `s3cr\et`, "s3cr\tet"} {
		out, err := sidecartest.Run(t, "serve", "--listen-address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0",
			"--redis-url", "redis://user:"+pw+"@127.0.0.1:6379/0")
		if err == nil || !strings.Contains(out, "cannot parse --redis-url") {
			t.Fatalf("serve with an unparsable --redis-url: %v\n%s", err, out)
		}
		if strings.Contains(out, "s3cr") {
			t.Fatalf("the password of an unparsable --redis-url appears:\n%s", out)
		}
	}
}

func TestReplicasShareOneTokenLimit(t *testing.T) {
	srv := redistest.Start(t)
	sidecars := replicas(t, 3, "limits:\n  - limit_type: minute\n    tokens: 1000\n", "--redis-url", srv.URL())
	_, reserved, elapsed := hammer(t, sidecars, 6, 10*time.Second, "bob", 50)
	assertNoFallback(t, sidecars)
	// Estimates of 50 tokens: the bound rounds down to whole estimates.
	bound := 1000 + 1000*elapsed.Minutes()
	if float64(reserved) > bound || float64(reserved) < bound-2*50 {
		t.Fatalf("reserved %d tokens, want at most capacity + refill %.0f and within two estimates of it", reserved, bound)
	}
}

func TestReplicasShareOneLimitOnCluster(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	sidecars := replicas(t, 3, "limits:\n  - limit_type: minute\n    requests: 20\n", "--redis-url", cluster.URL(), "--redis-cluster")
	for _, user := range []string{"alice", "bob", "carol"} { // over several slots
		admitted, _, elapsed := hammer(t, sidecars, 6, 4*time.Second, user, 0)
		assertNoFallback(t, sidecars)
		assertAdmitted(t, "a Redis Cluster, user "+user, admitted, 20, 20, elapsed)
	}
}

// TestRedisOutage stops Redis mid-run: every check is still answered
// within the timeout (plus the HTTP round trip), the fleet admits each
// replica's share, /readyz stays 200 and says degraded; once Redis is
// back the limit is global again within 5 seconds.
func TestRedisOutage(t *testing.T) {
	srv := redistest.Start(t)
	sidecars := replicas(t, 3, "limits:\n  - limit_type: day\n    requests: 30\n", "--redis-url", srv.URL(), "--redis-timeout", "50ms")
	sidecartest.WaitFor(t, 10*time.Second, func() bool {
		return sidecars[0].Gauge("llmusage_quota_replicas") == 3
	}, "the replicas did not see each other in Redis")
	if admitted, _, _ := hammer(t, sidecars, 3, time.Second, "alice", 0); admitted != 30 {
		t.Fatalf("before the outage: %d admitted of 30 a day", admitted)
	}
	srv.Stop(t)
	var slowest time.Duration
	var admitted int
	client := &http.Client{Timeout: 5 * time.Second}
	for i := 0; i < 90; i++ {
		start := time.Now()
		resp, err := client.Post(sidecars[i%3].APIURL()+"/v1/check", "application/json", strings.NewReader(`{"user_id": "dave", "model": "gpt-4o"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		slowest = max(slowest, time.Since(start))
		if resp.StatusCode == http.StatusOK {
			admitted++
		} else if resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("check during the outage: %d", resp.StatusCode)
		}
	}
	t.Logf("during the outage: %d of 90 checks admitted, slowest %s", admitted, slowest)
	if admitted != 30 {
		t.Fatalf("the fleet admitted %d during the outage, want each replica's share 10 x 3", admitted)
	}
	if slowest > 50*time.Millisecond+250*time.Millisecond {
		t.Fatalf("a check took %s with Redis down, --redis-timeout 50ms", slowest)
	}
	for i, s := range sidecars {
		resp, err := client.Get(s.MetricsURL() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		code, _, body := sidecartest.DecodeJSON(t, resp)
		if code != http.StatusOK || body["status"] != "degraded" || !strings.Contains(fmt.Sprint(body["quota"]), "Redis") {
			t.Fatalf("sidecar %d /readyz during the outage: %d %v, want 200 degraded naming Redis", i, code, body)
		}
		if s.Gauge("llmusage_quota_backend_up") != 0 || s.Gauge(`llmusage_quota_fallback_checks_total{mode="local"}`) < 1 {
			t.Fatalf("sidecar %d: backend up %v, fallbacks %v", i, s.Gauge("llmusage_quota_backend_up"), s.Gauge(`llmusage_quota_fallback_checks_total{mode="local"}`))
		}
	}

	srv.Restart(t)
	back := time.Now()
	sidecartest.WaitFor(t, 5*time.Second, func() bool {
		for _, s := range sidecars {
			if s.Gauge("llmusage_quota_backend_up") != 1 {
				return false
			}
		}
		return true
	}, "the sidecars did not go back to Redis within 5 s")
	t.Logf("back on Redis after %s", time.Since(back).Round(time.Millisecond))
	// Redis restarted empty: a new user's limit is global again.
	if admitted, _, _ := hammer(t, sidecars, 3, time.Second, "erin", 0); admitted != 30 {
		t.Fatalf("after the outage: %d admitted of 30 a day, want the global limit", admitted)
	}
}

// TestRuleChangeKeepsSharedLevels changes the limit mid-run, by the
// limits file (SIGHUP) and by a database row: the level in Redis stays,
// as the memory store's does (a raised limit is not a fresh allowance).
func TestRuleChangeKeepsSharedLevels(t *testing.T) {
	srv := redistest.Start(t)
	dbURL := pgtest.URL(t)
	sidecars := sidecartest.StartN(t, 2, sidecartest.Options{Limits: "limits:\n  - limit_type: day\n    requests: 10\n",
		DatabaseURL: dbURL, Flags: []string{"--redis-url", srv.URL(), "--redis-timeout", "2s"}})
	if admitted, _, _ := hammer(t, sidecars, 2, 500*time.Millisecond, "alice", 0); admitted != 10 {
		t.Fatalf("admitted %d of 10", admitted)
	}
	for _, s := range sidecars {
		if err := os.WriteFile(s.LimitsFile, []byte("limits:\n  - limit_type: day\n    requests: 15\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		s.Signal(t, syscall.SIGHUP)
	}
	sidecartest.WaitFor(t, 5*time.Second, func() bool {
		for _, s := range sidecars {
			if !strings.Contains(s.Log(), "limits file reloaded") {
				return false
			}
		}
		return true
	}, "the limits file was not reloaded")
	if admitted, _, _ := hammer(t, sidecars, 2, 500*time.Millisecond, "alice", 0); admitted != 0 {
		t.Fatalf("after raising the limit to 15 by the file: %d more admitted, want 0 (the level stays at 0)", admitted)
	}
	// Bob, who used 1 of 15, keeps his 14 across a row that sets 20.
	if code, _, body := sidecars[0].PostJSON(t, "/v1/check", `{"user_id": "bob", "model": "gpt-4o"}`); code != http.StatusOK {
		t.Fatalf("bob's first check: %d %v", code, body)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO llm_rate_limit_configs (limit_type, limit_value) VALUES ('day', 20)`); err != nil {
		t.Fatal(err)
	}
	sidecartest.WaitFor(t, 5*time.Second, func() bool {
		for _, s := range sidecars {
			if _, body := s.Get(t, "/v1/limits?user_id=bob"); !strings.Contains(fmt.Sprint(body), "limit:20") {
				return false
			}
		}
		return true
	}, "the database row did not apply")
	_, body := sidecars[1].Get(t, "/v1/limits?user_id=bob")
	if remaining := body["limits"].([]any)[0].(map[string]any)["remaining"]; remaining != float64(14) {
		t.Fatalf("bob after the row: remaining %v, want 14 (his level kept)", remaining)
	}
	assertNoFallback(t, sidecars)
}
