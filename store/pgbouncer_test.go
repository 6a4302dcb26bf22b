package store

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/record"
)

// TestThroughPgBouncer: through a PgBouncer in transaction mode (which
// hands each transaction to any of its server connections, and keeps
// nothing of a session), the migrations run, the store detects the pooler
// (so sends no server-side prepared statements), two stores writing
// overlapping batches at once store every record exactly once, and rule
// changes arrive within 2 seconds, polled or LISTENed on a direct URL.
func TestThroughPgBouncer(t *testing.T) {
	direct := pgtest.URL(t)
	bouncer := pgtest.PgBouncerURL(t, direct)
	ctx := context.Background()
	open := func(opts Options) *postgresStore {
		t.Helper()
		s, err := Open(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s.(*postgresStore)
	}
	a := open(Options{DatabaseURL: bouncer, MaxConns: 4})
	if _, err := a.Migrate(ctx); err != nil {
		t.Fatalf("migrations through PgBouncer: %s", err)
	}
	if pooled, err := a.detect(ctx); err != nil || !pooled {
		t.Fatalf("PgBouncer not detected as a pooler: %v, %v", pooled, err)
	}
	if pooled, err := open(Options{DatabaseURL: direct}).detect(ctx); err != nil || pooled {
		t.Fatalf("a direct connection taken for a pooler: %v, %v", pooled, err)
	}
	b := open(Options{DatabaseURL: bouncer, MaxConns: 4})

	// Batches of 50 overlapping by 25: every batch but the first holds
	// stored request_ids and takes the temporary table; two stores and
	// two goroutines each keep PgBouncer's server connections shuffled.
	const batches, size = 40, 50
	var stored atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 4*batches)
	for w, s := range []*postgresStore{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range batches {
				recs := make([]record.Record, size)
				for j := range recs {
					// Worker pairs (0, 2) and (1, 3) write the same ids.
					id := fmt.Sprintf("pgb-%d-%05d", w%2, i*size/2+j)
					recs[j] = rec(id, "u", "openai", "gpt-4o", 1, 1, t0)
				}
				n, err := s.Insert(ctx, recs)
				if err != nil {
					errs <- err
					return
				}
				stored.Add(int64(n))
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("insert through PgBouncer: %s", err)
	}
	want := int64(2 * ((batches-1)*size/2 + size))
	var rows, distinct int64
	if err := a.pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT request_id) FROM llm_usage_logs`).Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	if rows != want || distinct != want || stored.Load() != want {
		t.Fatalf("%d rows (%d distinct), Insert reported %d new, want %d", rows, distinct, stored.Load(), want)
	}

	directConn, err := pgx.Connect(ctx, direct)
	if err != nil {
		t.Fatal(err)
	}
	defer directConn.Close(ctx)
	for _, c := range []struct {
		name string
		opts Options
	}{
		{"polled", Options{DatabaseURL: bouncer}},
		{"listen-url", Options{DatabaseURL: bouncer, ListenURL: direct, PollInterval: time.Hour}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := open(c.opts)
			ctx, cancel := context.WithCancel(ctx)
			changes := make(chan struct{}, 100)
			done := make(chan struct{})
			go func() {
				defer close(done)
				_ = s.WatchRules(ctx, func() { changes <- struct{}{} })
			}()
			defer func() { cancel(); <-done }()
			// Let the watcher LISTEN or read its first snapshot.
			if c.opts.ListenURL != "" {
				deadline := time.Now().Add(10 * time.Second)
				for s.Connections().Listening != 1 {
					if time.Now().After(deadline) {
						t.Fatal("no LISTEN connection on --database-listen-url")
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			time.Sleep(1500 * time.Millisecond)
			for len(changes) > 0 {
				<-changes
			}
			if _, err := directConn.Exec(ctx, `INSERT INTO llm_rate_limits (user_id, limit_type, limit_value) VALUES ($1, 'minute', 5)`, c.name); err != nil {
				t.Fatal(err)
			}
			select {
			case <-changes:
			case <-time.After(2 * time.Second):
				t.Fatal("a rule change through PgBouncer not reported within 2 s")
			}
		})
	}
}
