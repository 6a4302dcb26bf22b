//go:build fault

// Package fault is llmusage's fault-injection suite: kill -9 under load,
// a Postgres outage under load, a full spool, and a flood of distinct
// users. Each scenario reports records acknowledged (2xx), persisted,
// duplicated and lost; lost and duplicated must be 0.
//
//	go test -tags fault -count=1 -v ./test/fault/   (make fault)
package fault

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/internal/sidecartest"
)

func TestMain(m *testing.M) { os.Exit(sidecartest.Main(m)) }

// startSidecar starts a sidecar on dataDir, which the test may kill and
// restart (on the same ports). Start and Restart wait for /healthz only:
// /readyz answers 200 as soon as the sidecar serves, whatever the spool
// and the database, and the tests assert what it says.
func startSidecar(t *testing.T, dataDir string, extra ...string) *sidecartest.Sidecar {
	t.Helper()
	return sidecartest.Start(t, sidecartest.Options{
		DataDir: dataDir,
		Flags:   append([]string{"--flush-interval", "100ms"}, extra...),
		Ready:   sidecartest.Healthz,
	})
}

// readiness is a /readyz answer.
type readiness struct {
	Status        string `json:"status"`
	Spool         string `json:"spool"`
	Store         string `json:"store"`
	QueuedRecords int    `json:"queued_records"`
}

func ready(s *sidecartest.Sidecar) (int, readiness) {
	var body readiness
	resp, err := s.Client.Get(s.MetricsURL() + "/readyz")
	if err != nil {
		return 0, body
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

// load posts NDJSON batches from several clients until stopped, each
// record tagged with a sequence number in its metadata; half carry a
// request_id, half get one generated at intake. It remembers which
// sequence numbers were acknowledged.
type load struct {
	url     string
	next    atomic.Int64
	mu      sync.Mutex
	acked   map[int64]bool
	refused atomic.Int64
	codes   sync.Map
	stop    chan struct{}
	wg      sync.WaitGroup
}

func startLoad(api string, clients, batch int) *load {
	l := &load{url: api + "/v1/calls", acked: map[int64]bool{}, stop: make(chan struct{})}
	client := &http.Client{Timeout: 30 * time.Second}
	for c := 0; c < clients; c++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				var body bytes.Buffer
				seqs := make([]int64, batch)
				for i := range seqs {
					seq := l.next.Add(1)
					seqs[i] = seq
					id := ""
					if seq%2 == 0 {
						id = fmt.Sprintf(`"request_id":"load-%d",`, seq)
					}
					fmt.Fprintf(&body, `{%s"user_id":"user-%d","model":"gpt-4o","prompt_tokens":%d,"completion_tokens":1,"metadata":{"seq":%d}}`+"\n", id, seq%100, seq%1000, seq)
				}
				resp, err := client.Post(l.url, "application/x-ndjson", &body)
				if err != nil {
					l.refused.Add(int64(batch))
					time.Sleep(20 * time.Millisecond)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				n, _ := l.codes.LoadOrStore(resp.StatusCode, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
				if resp.StatusCode/100 == 2 {
					l.mu.Lock()
					for _, s := range seqs {
						l.acked[s] = true
					}
					l.mu.Unlock()
				} else {
					l.refused.Add(int64(batch))
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	return l
}

func (l *load) finish() {
	close(l.stop)
	l.wg.Wait()
}

func (l *load) ackedCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acked)
}

func (l *load) codesString() string {
	var parts []string
	l.codes.Range(func(k, v any) bool {
		parts = append(parts, fmt.Sprintf("%v:%d", k, v.(*atomic.Int64).Load()))
		return true
	})
	return strings.Join(parts, " ")
}

// audit compares the acknowledged records with the rows, by sequence number.
type audit struct {
	acked, persisted, duplicated, lost int
}

func (a audit) String() string {
	return fmt.Sprintf("acknowledged %d, persisted %d, duplicated %d, lost %d", a.acked, a.persisted, a.duplicated, a.lost)
}

func auditRows(t *testing.T, dbURL string, l *load) audit {
	t.Helper()
	ctx := context.Background()
	db, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	rows, err := db.Query(ctx, `SELECT (metadata->>'seq')::bigint, count(*) FROM llm_usage_logs GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[int64]int{}
	a := audit{}
	for rows.Next() {
		var seq int64
		var n int
		if err := rows.Scan(&seq, &n); err != nil {
			t.Fatal(err)
		}
		stored[seq] = n
		a.persisted += n
		a.duplicated += n - 1
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	a.acked = len(l.acked)
	for seq := range l.acked {
		if stored[seq] == 0 {
			a.lost++
		}
	}
	return a
}

// waitDrained waits until the sidecar's queue is empty and its store up.
func waitDrained(t *testing.T, s *sidecartest.Sidecar) {
	t.Helper()
	var queued, up float64
	if !sidecartest.Eventually(3*time.Minute, func() bool {
		queued, up = s.Gauge("llmusage_persist_queue_records"), s.Gauge("llmusage_store_up")
		return queued == 0 && up == 1
	}) {
		t.Fatalf("queue not drained after 3 min: %v records, store_up %v", queued, up)
	}
}

func envDuration(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}

// TestKillAndOutageUnderLoad: under continuous load, kill -9 the sidecar
// five times, then stop Postgres for LLMUSAGE_FAULT_OUTAGE (30 s); every
// acknowledged record must be stored exactly once.
func TestKillAndOutageUnderLoad(t *testing.T) {
	srv := pgtest.StartServer(t)
	dbURL := createDatabase(t, srv, "llmusage_fault")
	s := startSidecar(t, t.TempDir(), "--database-url", dbURL, "--durability", "fsync")
	l := startLoad(s.APIURL(), 4, 20)

	for i := 1; i <= 5; i++ {
		time.Sleep(time.Duration(300+i*150) * time.Millisecond)
		before := l.ackedCount()
		s.Kill9(t)
		t.Logf("kill -9 #%d after %d acknowledged records", i, before)
		time.Sleep(200 * time.Millisecond) // the load keeps knocking
		s.Restart(t)
	}

	outage := envDuration("LLMUSAGE_FAULT_OUTAGE", 30*time.Second)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Postgres stopped for %s under load", outage)
	during := l.ackedCount()
	deadline := time.Now().Add(outage)
	sawDegraded, maxQueued := false, 0
	for time.Now().Before(deadline) {
		code, body := ready(s)
		if code == http.StatusOK && body.Status == "degraded" {
			sawDegraded = true
		}
		maxQueued = max(maxQueued, body.QueuedRecords)
		if code != http.StatusOK && code != 0 {
			t.Fatalf("/readyz answered %d %v during the outage; records still reach the spool", code, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !sawDegraded {
		t.Fatal("/readyz never reported degraded while Postgres was down")
	}
	if l.ackedCount() <= during {
		t.Fatal("no record was acknowledged while Postgres was down")
	}
	// The backlog /readyz reports grew with what was acknowledged.
	if maxQueued < (l.ackedCount()-during)/2 {
		t.Fatalf("/readyz reported at most %d queued records; %d were acknowledged during the outage", maxQueued, l.ackedCount()-during)
	}
	t.Logf("acknowledged during the outage: %d, spooled: %.0f records", l.ackedCount()-during, s.Gauge("llmusage_spool_records"))
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	l.finish()
	waitDrained(t, s)
	if err := s.Stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}

	a := auditRows(t, dbURL, l)
	t.Logf("kill -9 x5 and a %s Postgres outage: %s (HTTP answers %s; not acknowledged: %d)", outage, a, l.codesString(), l.refused.Load())
	if a.lost != 0 || a.duplicated != 0 {
		t.Fatalf("lost %d, duplicated %d; want 0 and 0", a.lost, a.duplicated)
	}
	if a.acked == 0 {
		t.Fatal("nothing was acknowledged")
	}
}

// TestFullSpool: with Postgres down and a small spool, records are
// refused with 503 and Retry-After once the spool is full, while /readyz
// stays 200 and says degraded with the spool's and the store's reasons
// (a shared database's outage must not take the application's pods out
// of service), and everything acknowledged is stored once Postgres
// returns.
func TestFullSpool(t *testing.T) {
	srv := pgtest.StartServer(t)
	dbURL := createDatabase(t, srv, "llmusage_fault")
	s := startSidecar(t, t.TempDir(), "--database-url", dbURL, "--spool-max-bytes", "65536")
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	l := startLoad(s.APIURL(), 2, 10)
	deadline := time.Now().Add(time.Minute)
	for {
		code, body := ready(s)
		if code != http.StatusOK && code != 0 {
			t.Fatalf("/readyz answered %d %v while the spool filled; want 200", code, body)
		}
		if strings.Contains(body.Spool, "spool is full") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never reported the full spool: %d %v", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A refused request gets a 503 with Retry-After and a JSON reason.
	// A request larger than what is left: 50 records, where the load's
	// batches of 10 no longer fit.
	probe := strings.Repeat(`{"user_id":"u","model":"m","metadata":{"seq":-1}}`+"\n", 50)
	resp, err := http.Post(s.APIURL()+"/v1/calls", "application/x-ndjson", strings.NewReader(probe))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), "spool is full") {
		t.Fatalf("post to a full spool: %d %q %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	// The load's batches differ in size by a few dozen bytes (request_ids
	// on half the records, numbers of 1 to 3 digits): one refused for the
	// bytes left may be followed by a smaller one that fits. Once none
	// fits, acknowledgements stop: within a few batches, and for good.
	var full int
	stopped := sidecartest.Eventually(5*time.Second, func() bool {
		full = l.ackedCount()
		time.Sleep(500 * time.Millisecond)
		return l.ackedCount() == full
	})
	if !stopped {
		t.Fatalf("records still acknowledged 5 s after the spool was full: %d", l.ackedCount())
	}
	// Records refused, and the pod still ready: 200, degraded, with both
	// reasons and the backlog.
	code, body := ready(s)
	if code != http.StatusOK || body.Status != "degraded" || !strings.Contains(body.Spool, "spool is full") || body.Store == "" || body.QueuedRecords == 0 {
		t.Fatalf("/readyz with the spool full and Postgres down: %d %+v, want 200 degraded with the spool's and the store's reasons", code, body)
	}
	if used, bound := s.Gauge("llmusage_spool_bytes"), s.Gauge("llmusage_spool_max_bytes"); bound != 65536 || used <= 0.9*bound || used > bound {
		t.Fatalf("llmusage_spool_bytes %v, llmusage_spool_max_bytes %v: want the spool at its 64 KiB bound", used, bound)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	// The spool drains and intake resumes by itself.
	deadline = time.Now().Add(time.Minute)
	for l.ackedCount() == full {
		if time.Now().After(deadline) {
			t.Fatal("intake did not resume after Postgres returned")
		}
		time.Sleep(50 * time.Millisecond)
	}
	l.finish()
	waitDrained(t, s)
	if code, body := ready(s); code != http.StatusOK || body.Status != "ok" {
		t.Fatalf("/readyz after recovery: %d %v", code, body)
	}
	if err := s.Stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	a := auditRows(t, dbURL, l)
	t.Logf("full spool (64 KiB) during an outage: %s (HTTP answers %s)", a, l.codesString())
	if a.lost != 0 || a.duplicated != 0 || a.acked == 0 {
		t.Fatalf("lost %d, duplicated %d, acknowledged %d", a.lost, a.duplicated, a.acked)
	}
}

// TestUserFlood posts 1,000,000 records of distinct users and reads the
// sidecar's peak RSS (VmHWM): idle buckets are swept, user series capped.
func TestUserFlood(t *testing.T) {
	users := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("LLMUSAGE_FAULT_FLOOD_USERS")); err == nil {
		users = v
	}
	dir := t.TempDir()
	// The embedded store and the seeded default rules: two buckets per user.
	// As in a pod whose container limit is 142 MiB: --memory-limit=auto
	// would take 90% of it. LLMUSAGE_FAULT_MEMORY_LIMIT=0 shows the
	// unlimited figure.
	limit := "128MiB"
	if v, ok := os.LookupEnv("LLMUSAGE_FAULT_MEMORY_LIMIT"); ok {
		limit = v
	}
	s := startSidecar(t, dir, "--batch-size", "5000", "--memory-limit", limit)
	const batch, clients = 1000, 1
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: time.Minute}
			var body bytes.Buffer
			for {
				first := next.Add(batch) - batch
				if first >= int64(users) {
					return
				}
				body.Reset()
				for i := first; i < first+batch && i < int64(users); i++ {
					fmt.Fprintf(&body, `{"user_id":"flood-%d","model":"gpt-4o-mini","prompt_tokens":3,"completion_tokens":1}`+"\n", i)
				}
				resp, err := client.Post(s.APIURL()+"/v1/calls", "application/x-ndjson", &body)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					t.Errorf("flood batch at %d: %d", first, resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	users64 := s.Gauge("llmusage_metrics_users")
	overflow := s.Gauge("llmusage_metrics_users_overflow_total")
	buckets := s.Gauge("llmusage_limiter_buckets")
	waitDrained(t, s)
	hwm := peakRSS(t, s.PID())
	if err := s.Stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	t.Logf("flood of %d distinct users in %s (%.0f records/s), --memory-limit %s: peak RSS %.1f MiB; user series %.0f (overflow %.0f); live buckets at the end of the flood %.0f",
		users, elapsed.Round(time.Millisecond), float64(users)/elapsed.Seconds(), limit, float64(hwm)/(1<<20), users64, overflow, buckets)
	if users64 > 10000 {
		t.Fatalf("%v user series: the cap of 10,000 did not hold", users64)
	}
	if limit != "0" && hwm > 300<<20 {
		t.Fatalf("peak RSS %.1f MiB, over the 300 MiB target", float64(hwm)/(1<<20))
	}
}

// peakRSS reads VmHWM, the process's peak resident set, in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}
