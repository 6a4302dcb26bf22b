package rules_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/llmusage/llmusage/internal/sidecartest"
	"github.com/llmusage/llmusage/rules"
)

// syncBuffer is a log sink the manager's goroutines write while the test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond until it holds, or fails the test after 10 s: it
// asserts that a change applies, never how fast.
func waitFor(t *testing.T, cond func() bool, format string, args ...any) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf(format, args...)
		}
	}
}

// reloads counts the reloads of the limits file logged.
func reloads(log *syncBuffer) int { return strings.Count(log.String(), `msg="limits file reloaded"`) }

// runWatched starts a Manager on file with short intervals, and Run.
func runWatched(t *testing.T, file string, watch rules.WatchOptions) (*rules.Manager, *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := &syncBuffer{}
	if watch.Debounce == 0 {
		watch.Debounce = 20 * time.Millisecond
	}
	if watch.Poll == 0 {
		watch.Poll = time.Hour // the watcher alone must see the change
	}
	m, err := rules.New(ctx, rules.Options{File: file, Logger: slog.New(slog.NewTextHandler(log, nil)), Watch: watch})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.Run(ctx, func(*rules.Set) error { return nil })
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("the manager's log:\n%s", log)
		}
	})
	return m, log
}

// TestWatchPlainRewrite: a file rewritten in place applies by itself.
func TestWatchPlainRewrite(t *testing.T) {
	file := filepath.Join(t.TempDir(), "limits.yaml")
	writeFile(t, file, "limits:\n  - limit_type: minute\n    requests: 3\n")
	m, log := runWatched(t, file, rules.WatchOptions{})
	writeFile(t, file, "limits:\n  - limit_type: hour\n    requests: 7\n")
	waitFor(t, func() bool { return limits(m.Set()) == "hour=7" && reloads(log) >= 1 }, "the rewritten file did not apply; in force: %s", limits(m.Set()))
	if n := reloads(log); n != 1 {
		t.Fatalf("%d reloads logged, want 1:\n%s", n, log)
	}
	if !strings.Contains(log.String(), `trigger="file change"`) {
		t.Fatalf("the reload does not say what triggered it:\n%s", log)
	}
}

// TestWatchConfigMapSwap: a ConfigMap update, a symlink swap that leaves
// limits.yaml itself untouched, applies by itself; the events of the old
// directory's removal reload nothing more.
func TestWatchConfigMapSwap(t *testing.T) {
	v := sidecartest.NewConfigMapVolume(t, "limits.yaml", "limits:\n  - limit_type: minute\n    requests: 3\n")
	file := v.Path
	m, log := runWatched(t, file, rules.WatchOptions{})
	if got := limits(m.Set()); got != "minute=3" {
		t.Fatalf("at start: %s", got)
	}
	v.Update("limits:\n  - limit_type: minute\n    requests: 5\n")
	waitFor(t, func() bool { return limits(m.Set()) == "minute=5" }, "the swapped ConfigMap did not apply; in force: %s", limits(m.Set()))
	v.Update("limits:\n  - limit_type: minute\n    requests: 8\n")
	waitFor(t, func() bool { return limits(m.Set()) == "minute=8" && reloads(log) >= 2 }, "the second swap did not apply; in force: %s", limits(m.Set()))
	if n := reloads(log); n != 2 {
		t.Fatalf("%d reloads logged for 2 changes, want 2 (no reload without a change):\n%s", n, log)
	}
	if failures, ok, _ := m.FileReloads(); failures != 0 || !ok {
		t.Fatalf("FileReloads: %d failures, last ok %v", failures, ok)
	}
}

// TestWatchBadFile: a change that does not load keeps the rules in force,
// counts a failure (once: the same bad content is not reported again) and
// the next good change applies.
func TestWatchBadFile(t *testing.T) {
	v := sidecartest.NewConfigMapVolume(t, "limits.yaml", "limits:\n  - limit_type: minute\n    requests: 3\n")
	file := v.Path
	m, log := runWatched(t, file, rules.WatchOptions{})
	_, _, started := m.FileReloads()
	if started.IsZero() {
		t.Fatal("no load time at start")
	}
	v.Update("limits:\n  - limit_type: minute\n    requests: zero\n")
	waitFor(t, func() bool { n, _, _ := m.FileReloads(); return n == 1 }, "the bad file's reload was not counted as failed")
	if got := limits(m.Set()); got != "minute=3" {
		t.Fatalf("after a bad file: %s, want the previous minute=3", got)
	}
	if _, ok, at := m.FileReloads(); ok || !at.Equal(started) {
		t.Fatalf("after a bad file: last ok %v, loaded %s (at start %s)", ok, at, started)
	}
	waitFor(t, func() bool {
		return strings.Contains(log.String(), `msg="limits file not reloaded; the previous rules stay in force"`)
	}, "the failure is not logged as SIGHUP's is:\n%s", log)
	v.Update("limits:\n  - limit_type: minute\n    requests: 9\n")
	waitFor(t, func() bool { return limits(m.Set()) == "minute=9" }, "the good file after a bad one did not apply; in force: %s", limits(m.Set()))
	if n, ok, at := m.FileReloads(); n != 1 || !ok || !at.After(started) {
		t.Fatalf("after the fix: %d failures (want 1), last ok %v, loaded %s (at start %s)", n, ok, at, started)
	}
}

// TestWatchPollsWithoutWatcher: when no watcher can be created, a change
// still applies, by polling.
func TestWatchPollsWithoutWatcher(t *testing.T) {
	v := sidecartest.NewConfigMapVolume(t, "limits.yaml", "limits:\n  - limit_type: minute\n    requests: 3\n")
	file := v.Path
	m, log := runWatched(t, file, rules.WatchOptions{Poll: 20 * time.Millisecond, NewWatcher: func() (*fsnotify.Watcher, error) {
		return nil, errors.New("cannot create a watcher: too many open files")
	}})
	v.Update("limits:\n  - limit_type: day\n    requests: 50\n")
	waitFor(t, func() bool { return limits(m.Set()) == "day=50" }, "the polled file did not apply; in force: %s", limits(m.Set()))
	if !strings.Contains(log.String(), "polling it for changes") {
		t.Fatalf("the fallback to polling is not logged:\n%s", log)
	}
}
