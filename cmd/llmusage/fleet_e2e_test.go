package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/internal/sidecartest"
)

// fleetSize is how many sidecars share one Postgres in the fleet tests:
// the figure, 50 pods.
const fleetSize = 50

// fleetFlags keep 50 sidecars light on two cores: small batches, often.
var fleetFlags = []string{"--batch-size", "20", "--flush-interval", "200ms", "--metrics-user-label=false"}

// connSampler counts, every 50 ms, the server's connections to one
// database (the test's own aside) and keeps the most seen.
type connSampler struct {
	most atomic.Int64
	stop func()
}

func sampleConnections(t *testing.T, direct, database string) *connSampler {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	conn := observer(t, direct)
	s := &connSampler{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer conn.Close(context.Background())
		for ctx.Err() == nil {
			var n int64
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name <> 'llmusage-test-observer'`, database).Scan(&n); err == nil {
				if n > s.most.Load() {
					s.most.Store(n)
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	s.stop = func() { cancel(); <-done }
	t.Cleanup(s.stop)
	return s
}

// observer connects to the database for the test's own queries, under
// an application_name that the sampler leaves out.
func observer(t *testing.T, databaseURL string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = "llmusage-test-observer"
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// postFleet posts n records of its own (request_ids tag-<sidecar>-<i>) to
// every sidecar, 20 to a request, the first request twice (a client's
// retry), and returns the ids.
func postFleet(t *testing.T, sidecars []*sidecartest.Sidecar, tag string, n int) []string {
	t.Helper()
	var mu sync.Mutex
	var ids []string
	var wg sync.WaitGroup
	errs := make(chan string, len(sidecars))
	for i, s := range sidecars {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for start := 0; start < n; start += 20 {
				var body strings.Builder
				var mine []string
				for j := start; j < min(start+20, n); j++ {
					id := fmt.Sprintf("%s-%d-%d", tag, i, j)
					mine = append(mine, id)
					fmt.Fprintf(&body, `{"user_id":"u%d","model":"gpt-4o","prompt_tokens":10,"completion_tokens":5,"request_id":%q}`+"\n", i, id)
				}
				repeats := 1
				if start == 0 {
					repeats = 2
				}
				for range repeats {
					req, _ := http.NewRequest(http.MethodPost, s.APIURL()+"/v1/calls", strings.NewReader(body.String()))
					req.Header.Set("Content-Type", "application/x-ndjson")
					resp, err := s.Client.Do(req)
					if err != nil {
						errs <- err.Error()
						return
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusAccepted {
						errs <- fmt.Sprintf("sidecar %d: POST /v1/calls answered %d", i, resp.StatusCode)
						return
					}
				}
				mu.Lock()
				ids = append(ids, mine...)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	return ids
}

// waitStoredOnce waits until every id is in llm_usage_logs, and checks
// that no row is there twice.
func waitStoredOnce(t *testing.T, conn *pgx.Conn, ids []string, timeout time.Duration) time.Duration {
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	var found int
	if !sidecartest.Eventually(timeout, func() bool {
		_ = conn.QueryRow(ctx, `SELECT count(DISTINCT request_id) FROM llm_usage_logs WHERE request_id = ANY($1)`, ids).Scan(&found)
		return found == len(ids)
	}) {
		t.Fatalf("%d of %d records stored within %s", found, len(ids), timeout)
	}
	took := time.Since(start)
	var rows, distinct int
	if err := conn.QueryRow(ctx, `SELECT count(*), count(DISTINCT request_id) FROM llm_usage_logs`).Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	if rows != distinct {
		t.Fatalf("%d rows for %d request_ids: records stored twice", rows, distinct)
	}
	return took
}

// waitRuleEverywhere inserts a rule row for user and waits, at most 2
// seconds, until every sidecar enforces it.
func waitRuleEverywhere(t *testing.T, conn *pgx.Conn, sidecars []*sidecartest.Sidecar, user string) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), `INSERT INTO llm_rate_limits (user_id, limit_type, limit_value) VALUES ($1, 'minute', 7)`, user); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i, s := range sidecars {
		var got string
		if !sidecartest.Eventually(2*time.Second-time.Since(start), func() bool {
			_, body := s.Get(t, "/v1/rules?user_id="+user)
			b, _ := json.Marshal(body)
			got = string(b)
			return strings.Contains(got, `"limit":7`)
		}) {
			t.Fatalf("sidecar %d does not enforce a new row of llm_rate_limits 2 s after the INSERT: %s", i, got)
		}
	}
}

// databaseErrors finds, in a log, the errors of a database that turns
// clients away or times them out: too many connections (class 53),
// locks not available (55), deadlocks and serialization failures (40),
// statements cancelled by a timeout (57014).
var databaseErrors = regexp.MustCompile(`SQLSTATE (53\w{3}|55\w{3}|40\w{3}|57014)`)

// TestFleetConnectionBudget: 50 sidecars on one Postgres with the default
// budget (--database-max-conns 2, the LISTEN for rule changes within it)
// hold at most 100 connections, store every record exactly once, reload
// a rule row everywhere within 2 s, and after an outage drain their
// spools without the database turning any of them away.
func TestFleetConnectionBudget(t *testing.T) {
	// A server of the test's own: the shared one's 100 connections are
	// other tests' too. 130 leaves room to see a budget overrun.
	srv := pgtest.StartServer(t, "max_connections=130")
	direct := srv.URL()
	sidecars := sidecartest.StartN(t, fleetSize, sidecartest.Options{DatabaseURL: direct, Flags: fleetFlags})
	u, _ := url.Parse(direct)
	sampler := sampleConnections(t, direct, strings.TrimPrefix(u.Path, "/"))
	conn := observer(t, direct)
	defer func() { conn.Close(context.Background()) }()

	ids := postFleet(t, sidecars, "before", 40)
	waitStoredOnce(t, conn, ids, 60*time.Second)
	waitRuleEverywhere(t, conn, sidecars, "fleet-rule")
	if got := sidecars[0].Gauge(`llmusage_store_max_connections`); got != 2 {
		t.Fatalf("llmusage_store_max_connections %v, want 2", got)
	}

	// An outage: the sidecars spool, then drain when the server is back.
	conn.Close(context.Background())
	sampler.stop()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	outage := postFleet(t, sidecars, "outage", 60)
	logStart := make([]int, len(sidecars))
	for i, s := range sidecars {
		logStart[i] = len(s.Log())
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	sampler = sampleConnections(t, direct, strings.TrimPrefix(u.Path, "/"))
	conn = observer(t, direct)
	took := waitStoredOnce(t, conn, append(ids, outage...), 120*time.Second)
	t.Logf("%d sidecars drained %d spooled records %s after the server came back", len(sidecars), len(outage), took.Round(time.Millisecond))
	for i, s := range sidecars {
		if m := databaseErrors.FindString(s.Log()[logStart[i]:]); m != "" {
			t.Fatalf("sidecar %d met a database error while draining (%s)", i, m)
		}
	}
	sampler.stop()
	if most := sampler.most.Load(); most > fleetSize*2 {
		t.Fatalf("%d sidecars held %d connections at once, over their budget of %d", fleetSize, most, fleetSize*2)
	} else {
		t.Logf("%d sidecars held at most %d connections", fleetSize, most)
	}
}

// TestFleetThroughPgBouncer: the same 50 sidecars through a PgBouncer in
// transaction mode: the first migrates the schema through it, every
// record is stored exactly once, and rule rows reach every sidecar
// within 2 s, by polling (through PgBouncer) on half of them and LISTEN
// on a direct --database-listen-url on the other half.
func TestFleetThroughPgBouncer(t *testing.T) {
	direct := pgtest.URL(t)
	bouncer := pgtest.PgBouncerURL(t, direct)
	u, _ := url.Parse(direct)
	sampler := sampleConnections(t, direct, strings.TrimPrefix(u.Path, "/"))
	first := sidecartest.StartN(t, fleetSize/2, sidecartest.Options{DatabaseURL: bouncer, Flags: fleetFlags})
	listening := sidecartest.StartN(t, fleetSize/2, sidecartest.Options{DatabaseURL: bouncer,
		Flags: append([]string{"--database-listen-url", direct, "--migrate=false"}, fleetFlags...)})
	sidecars := append(first, listening...)
	if got := listening[0].Gauge(`llmusage_store_listen_connections`); got != 1 {
		t.Fatalf("llmusage_store_listen_connections %v with --database-listen-url, want 1", got)
	}
	conn := observer(t, direct)
	defer conn.Close(context.Background())
	ids := postFleet(t, sidecars, "pgbouncer", 40)
	waitStoredOnce(t, conn, ids, 60*time.Second)
	waitRuleEverywhere(t, conn, sidecars, "fleet-rule")
	for i, s := range sidecars {
		if m := databaseErrors.FindString(s.Log()); m != "" || strings.Contains(s.Log(), "prepared statement") {
			t.Fatalf("sidecar %d met a database error through PgBouncer:\n%s", i, s.Log())
		}
	}
	sampler.stop()
	t.Logf("%d sidecars through PgBouncer, %d of them with a direct LISTEN: at most %d connections to Postgres", fleetSize, len(listening), sampler.most.Load())
}
