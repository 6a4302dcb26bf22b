package rules_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/rules"
	"github.com/llmusage/llmusage/store"
)

// sqliteStore is a migrated embedded store with its seeded defaults, and
// a handle to change its rows as an operator would.
func sqliteStore(t *testing.T) (store.Store, *sql.DB) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	s, err := store.Open(ctx, store.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", filepath.Join(dir, "llmusage.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return s, db
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func limits(set *rules.Set) string {
	var out []string
	for _, r := range set.InForce {
		out = append(out, r.Window.String()+"="+strconv.FormatInt(r.Limit, 10))
	}
	return strings.Join(out, " ")
}

func TestManagerReloads(t *testing.T) {
	ctx := context.Background()
	s, db := sqliteStore(t)
	file := filepath.Join(t.TempDir(), "limits.yaml")
	writeFile(t, file, "limits:\n  - limit_type: minute\n    requests: 3\n")
	m, err := rules.New(ctx, rules.Options{File: file, DB: s})
	if err != nil {
		t.Fatal(err)
	}
	if got := limits(m.Set()); got != "minute=3" {
		t.Fatalf("at start: %s, want the file's minute=3 (the seeded defaults yield)", got)
	}

	// The seed's UPDATE: the operator's row wins.
	if _, err := db.Exec(`UPDATE llm_rate_limit_configs SET limit_value = 100 WHERE limit_type = 'minute'`); err != nil {
		t.Fatal(err)
	}
	if err := m.ReloadDB(ctx); err != nil {
		t.Fatal(err)
	}
	if got := limits(m.Set()); got != "minute=100" {
		t.Fatalf("after the UPDATE: %s, want minute=100", got)
	}

	// A file that does not load changes nothing.
	writeFile(t, file, "limits:\n  - limit_type: minute\n    requests: zero\n")
	if err := m.ReloadFile(); err == nil || !strings.HasPrefix(err.Error(), "cannot ") {
		t.Fatalf("reload of a bad file: %v", err)
	}
	if got := limits(m.Set()); got != "minute=100" {
		t.Fatalf("after a bad file: %s", got)
	}
	writeFile(t, file, "limits:\n  - limit_type: hour\n    requests: 7\n")
	if err := m.ReloadFile(); err != nil {
		t.Fatal(err)
	}
	if got := limits(m.Set()); got != "hour=7 minute=100" {
		t.Fatalf("after a new file: %s", got)
	}

	// Without a file there is nothing to reload.
	none, err := rules.New(ctx, rules.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := none.ReloadFile(); !errors.Is(err, rules.ErrNoFile) {
		t.Fatalf("reload without a file: %v", err)
	}
}

// TestManagerRun: a row changed in SQL reaches the applier within 2
// seconds; a Set the applier refuses leaves the one in force.
func TestManagerRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, db := sqliteStore(t)
	m, err := rules.New(ctx, rules.Options{DB: s})
	if err != nil {
		t.Fatal(err)
	}
	if got := limits(m.Set()); got != "minute=30 day=14400" {
		t.Fatalf("no file: %s, want the seeded defaults", got)
	}
	applied := make(chan *rules.Set, 10)
	refuse := make(chan bool, 1)
	refuse <- false
	go m.Run(ctx, func(set *rules.Set) error {
		r := <-refuse
		refuse <- r
		if r {
			return errors.New("cannot apply: refused by the test")
		}
		if _, err := limiter.New(set.InForce, limiter.Options{}); err != nil {
			return err
		}
		applied <- set
		return nil
	})
	exec := func(q string) {
		t.Helper()
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	wait := func(want string) {
		t.Helper()
		deadline := time.After(2 * time.Second)
		for {
			select {
			case set := <-applied:
				if limits(set) == want {
					return
				}
			case <-deadline:
				t.Fatalf("no Set with %s applied within 2 s; in force: %s", want, limits(m.Set()))
			}
		}
	}
	// The watcher needs its first snapshot before a change counts.
	time.Sleep(1200 * time.Millisecond)
	exec(`UPDATE llm_rate_limit_configs SET limit_value = 100 WHERE limit_type = 'minute'`)
	wait("minute=100 day=14400")

	<-refuse
	refuse <- true
	exec(`UPDATE llm_rate_limit_configs SET limit_value = 5 WHERE limit_type = 'minute'`)
	time.Sleep(2500 * time.Millisecond)
	if got := limits(m.Set()); got != "minute=100 day=14400" {
		t.Fatalf("a refused Set came into force: %s", got)
	}
}

// downAtStart is a database unreachable until up is closed, whose watch
// reports nothing: a LISTEN set up after the outage hears of no change,
// and a poll's first read is the baseline it compares to.
type downAtStart struct{ up chan struct{} }

func (d downAtStart) RuleRows(context.Context) ([]rules.Row, error) {
	select {
	case <-d.up:
		return []rules.Row{{Table: rules.UserLimitsTable, ID: "1", UserID: "alice", LimitType: "minute", LimitValue: 7}}, nil
	default:
		return nil, errors.New("cannot read the rule tables: connection refused")
	}
}

func (d downAtStart) WatchRules(ctx context.Context, _ func()) error {
	<-ctx.Done()
	return nil
}

// TestManagerReadsRowsAfterStartOutage: a sidecar that started while the
// database was unreachable (or its tables not yet migrated) enforces the
// database's rows once it can read them, without waiting for a change.
func TestManagerReadsRowsAfterStartOutage(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db := downAtStart{up: make(chan struct{})}
	m, err := rules.New(ctx, rules.Options{DB: db})
	if err != nil {
		t.Fatal(err)
	}
	if got := limits(m.Set()); got != "" {
		t.Fatalf("rules before the database is reachable: %q", got)
	}
	go m.Run(ctx, func(*rules.Set) error { return nil })
	time.Sleep(100 * time.Millisecond)
	close(db.up)
	deadline := time.Now().Add(3 * time.Second)
	for limits(m.Set()) != "minute=7" {
		if time.Now().After(deadline) {
			t.Fatalf("rules 3 s after the database came back: %q, want its row minute=7", limits(m.Set()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
