package store

import (
	"context"
	"database/sql"
	"sync/atomic"
	"testing"
	"time"
)

// TestWatchRulesSQLiteIdle checks that the embedded store's watcher, which
// reads the rule rows only once the database's files change, still sees
// a change written by another connection (another process, the sqlite3
// shell) after the files have settled, twice in a row, and also one
// written right after the watcher's first read.
func TestWatchRulesSQLiteIdle(t *testing.T) {
	s := openMigrated(t, Options{DataDir: t.TempDir()}).(*sqliteStore)
	other, err := sql.Open("sqlite", "file:"+s.path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var changes atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.WatchRules(ctx, func() { changes.Add(1) })
	}()
	defer func() { cancel(); <-done }()
	wait := func(want int64, what string) {
		t.Helper()
		deadline := time.Now().Add(4*stampSettle + 2*sqlitePollInterval)
		for changes.Load() < want {
			if time.Now().After(deadline) {
				t.Fatalf("no change reported after %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Right after the first read: the stamp is not settled yet.
	time.Sleep(sqlitePollInterval / 2)
	if _, err := other.Exec(`INSERT INTO llm_rate_limits (user_id, limit_type, limit_value) VALUES ('watched', 'minute', 5)`); err != nil {
		t.Fatal(err)
	}
	wait(1, "an INSERT right after the first read")
	for i, q := range []string{
		`UPDATE llm_rate_limits SET limit_value = 6 WHERE user_id = 'watched'`,
		`UPDATE llm_rate_limits SET limit_value = 7 WHERE user_id = 'watched'`,
	} {
		// Long enough for the files to settle: the watcher stops reading.
		time.Sleep(stampSettle + 2*sqlitePollInterval)
		if _, err := other.Exec(q); err != nil {
			t.Fatal(err)
		}
		wait(int64(i+2), q+" on a settled database")
	}
}
