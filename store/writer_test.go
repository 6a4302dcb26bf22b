package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/record"
)

// flakyStore is an SQLite store that fails while down is set, so that
// writer tests exercise a real Insert.
type flakyStore struct {
	Store
	mu      sync.Mutex
	down    bool
	batches []int
}

func (f *flakyStore) Insert(ctx context.Context, recs []record.Record) (int, error) {
	f.mu.Lock()
	down := f.down
	f.batches = append(f.batches, len(recs))
	f.mu.Unlock()
	if down {
		return 0, errors.New("database unreachable")
	}
	return f.Store.Insert(ctx, recs)
}

func (f *flakyStore) setDown(d bool) {
	f.mu.Lock()
	f.down = d
	f.mu.Unlock()
}

type flushCounter struct {
	mu                    sync.Mutex
	ok, failed, dead, dup int
}

func (c *flushCounter) ObserveDuplicates(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dup += n
}

func (c *flushCounter) ObserveFlush(n int, _ time.Duration, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.failed++
	} else {
		c.ok += n
	}
}

func (c *flushCounter) ObserveDeadLettered() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dead++
}

func records(prefix string, n int) []record.Record {
	out := make([]record.Record, n)
	for i := range out {
		out[i] = rec(fmt.Sprintf("%s-%d", prefix, i), "u", "openai", "gpt-4", 1, 1, t0)
	}
	return out
}

func countRows(t *testing.T, s Store) int {
	t.Helper()
	var n int
	if err := s.(*sqliteStore).db.QueryRow(`SELECT count(*) FROM llm_usage_logs`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestWriterBatchesAndRetries(t *testing.T) {
	base := openMigrated(t, Options{DataDir: t.TempDir()})
	fs := &flakyStore{Store: base}
	obs := &flushCounter{}
	w := NewWriter(fs, NewMemoryQueue(10), WriterOptions{BatchSize: 4, Observer: obs})

	if err := w.Enqueue(records("a", 6)); err != nil {
		t.Fatal(err)
	}
	// All or nothing: 6 + 5 > 10.
	if err := w.Enqueue(records("b", 5)); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("Enqueue over the bound: %v, want ErrQueueFull", err)
	}
	if w.Len() != 6 {
		t.Fatalf("queue %d, want 6 (the refused request added nothing)", w.Len())
	}
	fs.setDown(true)
	if err := w.Flush(context.Background()); err == nil {
		t.Fatal("flush against a down store succeeded")
	}
	if w.Len() != 6 || countRows(t, base) != 0 || w.StoreErr() == nil {
		t.Fatalf("after a failed flush: queue %d, rows %d, err %v; want everything still queued", w.Len(), countRows(t, base), w.StoreErr())
	}
	fs.setDown(false)
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w.Len() != 0 || countRows(t, base) != 6 || w.StoreErr() != nil {
		t.Fatalf("after recovery: queue %d, rows %d, err %v", w.Len(), countRows(t, base), w.StoreErr())
	}
	// Batches of at most BatchSize: the failed 4, then 4 and 2.
	if fmt.Sprint(fs.batches) != "[4 4 2]" {
		t.Fatalf("batches %v, want [4 4 2]", fs.batches)
	}
	if obs.ok != 6 || obs.failed != 1 {
		t.Fatalf("observed %d ok, %d failed flushes", obs.ok, obs.failed)
	}
	// Redelivery is harmless.
	if err := w.Enqueue(records("a", 6)); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(context.Background()); err != nil || countRows(t, base) != 6 {
		t.Fatalf("redelivered: %v, %d rows", err, countRows(t, base))
	}
}

func TestWriterRunFlushesBySize(t *testing.T) {
	base := openMigrated(t, Options{DataDir: t.TempDir()})
	// An interval far longer than the test: only the size trigger can flush.
	w := NewWriter(base, NewMemoryQueue(0), WriterOptions{BatchSize: 5, FlushInterval: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	if err := w.Enqueue(records("r", 5)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for countRows(t, base) != 5 {
		if time.Now().After(deadline) {
			t.Fatal("a full batch was not flushed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
}

// TestWriterDeadLetter: records Postgres refuses (a NUL in text, \u0000
// in jsonb), among good ones in one batch and on both sides of a stored
// request_id, go to the dead letter; every other record is stored, and
// the queue empties. Without a dead letter the batch stays queued.
func TestWriterDeadLetter(t *testing.T) {
	ctx := context.Background()
	s := openMigrated(t, Options{DatabaseURL: pgtest.URL(t)})
	recs := records("dl", 40)
	recs[3].ErrorType = "time\x00out"
	recs[30].Metadata = []byte(`{"k":"\u0000"}`)
	if _, err := s.Insert(ctx, recs[10:12]); err != nil { // stored already: the slow path
		t.Fatal(err)
	}

	q := NewMemoryQueue(0)
	if err := q.Enqueue(recs); err != nil {
		t.Fatal(err)
	}
	if err := NewWriter(s, q, WriterOptions{}).Flush(ctx); !errors.Is(err, ErrRejected) || q.Len() != 40 {
		t.Fatalf("without a dead letter: %v, %d queued; want ErrRejected and 40", err, q.Len())
	}

	obs := &flushCounter{}
	dl := &DeadLetterFile{Path: filepath.Join(t.TempDir(), "dl", "dead-letter.ndjson")}
	if err := NewWriter(s, q, WriterOptions{Observer: obs, DeadLetter: dl}).Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if q.Len() != 0 || obs.ok != 38 || obs.dead != 2 || obs.dup != 2 {
		t.Fatalf("%d queued, %d persisted, %d dead-lettered, %d duplicates; want 0, 38, 2, 2 (dl-10 and dl-11 were stored before)",
			q.Len(), obs.ok, obs.dead, obs.dup)
	}
	var stored int
	if err := s.(*postgresStore).pool.QueryRow(ctx, `SELECT count(*) FROM llm_usage_logs WHERE request_id LIKE 'dl-%'`).Scan(&stored); err != nil || stored != 38 {
		t.Fatalf("%d rows stored (%v), want 38", stored, err)
	}

	b, err := os.ReadFile(dl.Path)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var l struct {
			Error  string
			Record map[string]any
		}
		if err := json.Unmarshal(line, &l); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		if !strings.Contains(l.Error, "SQLSTATE") || l.Record["user_id"] != "u" {
			t.Fatalf("dead letter %s", line)
		}
		got = append(got, l.Record["request_id"].(string)+" "+fmt.Sprint(l.Record["error_type"], l.Record["metadata"]))
	}
	want := []string{recs[3].RequestID + " time\x00out<nil>", recs[30].RequestID + " <nil> map[k:\x00]"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("dead letters %q, want %q", got, want)
	}
}

// TestWriterCountsDuplicates: records whose request_id is stored already
// (a replay, a retried POST, or a client reusing ids) are counted, not
// silently taken for stored.
func TestWriterCountsDuplicates(t *testing.T) {
	forEachStore(t, func(t *testing.T, s Store, _ func(string)) {
		ctx := context.Background()
		recs := records("dup", 5)
		if _, err := s.Insert(ctx, recs[1:3]); err != nil {
			t.Fatal(err)
		}
		q := NewMemoryQueue(0)
		if err := q.Enqueue(recs); err != nil {
			t.Fatal(err)
		}
		obs := &flushCounter{}
		if err := NewWriter(s, q, WriterOptions{Observer: obs}).Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if obs.ok != 5 || obs.dup != 2 {
			t.Fatalf("%d written, %d duplicates; want 5 and 2", obs.ok, obs.dup)
		}
	})
}

// failingOnce fails its nth Insert with a transient error.
type failingOnce struct {
	Store
	calls, nth int
}

func (f *failingOnce) Insert(ctx context.Context, recs []record.Record) (int, error) {
	f.calls++
	if f.calls == f.nth {
		return 0, errors.New("connection reset")
	}
	return f.Store.Insert(ctx, recs)
}

// TestWriterDeadLetterRetries: a batch that fails for another reason
// halfway through its halving is retried whole, without writing its
// refused records to the dead letter twice; and a constraint every record
// fails alike (a NOT NULL column added by hand) is not the records' fault:
// the batch stays queued, nothing goes to the dead letter.
func TestWriterDeadLetterRetries(t *testing.T) {
	ctx := context.Background()
	s := openMigrated(t, Options{DatabaseURL: pgtest.URL(t)})
	exec := func(q string) {
		t.Helper()
		if _, err := s.(*postgresStore).pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	dl := &DeadLetterFile{Path: filepath.Join(t.TempDir(), "dead-letter.ndjson")}
	lines := func() int {
		b, _ := os.ReadFile(dl.Path)
		return bytes.Count(b, []byte("\n"))
	}

	recs := records("retry", 16)
	recs[2].ErrorType, recs[13].ErrorType = "a\x00", "b\x00"
	q := NewMemoryQueue(0)
	if err := q.Enqueue(recs); err != nil {
		t.Fatal(err)
	}
	// Inserts: the whole batch, its first half, that half's halves, ... and
	// the 9th lands in the second half, after recs[2] went to the dead letter.
	w := NewWriter(&failingOnce{Store: s, nth: 9}, q, WriterOptions{DeadLetter: dl})
	if err := w.Flush(ctx); err == nil || errors.Is(err, ErrRejected) {
		t.Fatalf("first flush: %v, want the transient error", err)
	}
	if n := lines(); n != 1 || q.Len() != 16 {
		t.Fatalf("after the failed flush: %d dead letters, %d queued; want 1 and 16", n, q.Len())
	}
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := lines(); n != 2 || q.Len() != 0 {
		t.Fatalf("after the retry: %d dead letters, %d queued; want 2 (one per refused record) and 0", n, q.Len())
	}

	exec(`ALTER TABLE llm_usage_logs ADD COLUMN required_by_hand text NOT NULL DEFAULT 'old rows'`)
	exec(`ALTER TABLE llm_usage_logs ALTER COLUMN required_by_hand DROP DEFAULT`)
	if err := q.Enqueue(records("schema", 4)); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(ctx); err == nil || errors.Is(err, ErrRejected) || q.Len() != 4 || lines() != 2 {
		t.Fatalf("under a NOT NULL column: %v, %d queued, %d dead letters; want a plain error, 4, 2", err, q.Len(), lines())
	}
	exec(`ALTER TABLE llm_usage_logs DROP COLUMN required_by_hand`)
	if err := w.Flush(ctx); err != nil || q.Len() != 0 {
		t.Fatalf("once mended: %v, %d queued", err, q.Len())
	}
}

// TestRetryWait: the wait after n failures doubles from the flush
// interval up to maxRetryWait, less up to half of it at random.
func TestRetryWait(t *testing.T) {
	for _, c := range []struct {
		interval time.Duration
		n        int
		r        float64
		want     time.Duration
	}{
		{time.Second, 1, 0, 2 * time.Second},
		{time.Second, 1, 0.5, 1500 * time.Millisecond},
		{time.Second, 1, 0.999, 1001 * time.Millisecond},
		{time.Second, 2, 0, 4 * time.Second},
		{time.Second, 3, 0, maxRetryWait},
		{time.Second, 1000, 0.5, maxRetryWait * 3 / 4},
		{100 * time.Millisecond, 2, 0.25, 350 * time.Millisecond},
		// An interval beyond the bound is kept, jittered.
		{10 * time.Second, 1, 0.5, 7500 * time.Millisecond},
	} {
		if got := RetryWait(c.interval, c.n, c.r); got != c.want {
			t.Errorf("RetryWait(%s, %d, %v) = %s, want %s", c.interval, c.n, c.r, got, c.want)
		}
	}
}

// TestWriterBacksOffWithJitter: a failed flush waits for its jittered
// backoff, drawn from Rand, even when full batches keep arriving (each
// would kick the writer), and the writer drains once the store is back.
func TestWriterBacksOffWithJitter(t *testing.T) {
	f := &flakyStore{Store: openMigrated(t, Options{DataDir: t.TempDir()})}
	f.setDown(true)
	var mu sync.Mutex
	draws := 0
	w := NewWriter(f, NewMemoryQueue(0), WriterOptions{BatchSize: 5, FlushInterval: 500 * time.Millisecond,
		Rand: func() float64 { mu.Lock(); defer mu.Unlock(); draws++; return 0 }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	attempts := func() int { f.mu.Lock(); defer f.mu.Unlock(); return len(f.batches) }
	if err := w.Enqueue(records("first", 5)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for attempts() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("a full batch was not flushed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The first failure waits 2 x 500 ms (Rand gives 0: no jitter off it):
	// batches enqueued within 200 ms must not bring the retry forward.
	for i := range 10 {
		if err := w.Enqueue(records(fmt.Sprintf("more%d", i), 5)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := attempts(); n != 1 {
		t.Fatalf("%d attempts within the first backoff, want 1: full batches bypass it", n)
	}
	mu.Lock()
	if draws != 1 {
		t.Errorf("Rand drawn %d times after one failure, want 1", draws)
	}
	mu.Unlock()
	f.setDown(false)
	for countRows(t, f.Store) != 55 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 55 records stored after the store came back", countRows(t, f.Store))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestJitteredReconnect: a reconnection waits between half its backoff
// and all of it, and not the same for every sidecar.
func TestJitteredReconnect(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := jittered(time.Second)
		if d < 500*time.Millisecond || d > time.Second {
			t.Fatalf("jittered(1s) = %s, want 0.5s to 1s", d)
		}
		seen[d] = true
	}
	if len(seen) < 100 {
		t.Fatalf("%d distinct waits of 1,000: no jitter", len(seen))
	}
}
