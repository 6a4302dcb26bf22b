package ledger

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/store"
	"github.com/llmusage/llmusage/usage"
	"github.com/llmusage/llmusage/usd"
)

var t0 = time.Date(2026, 12, 1, 23, 50, 0, 0, time.UTC)

func rec(id, user, provider, model string, cost usd.Amount, at time.Time) record.Record {
	return record.Record{RequestID: id, UserID: user, Provider: provider, Model: model, Cost: cost, HasCost: true, Timestamp: at}
}

func TestSpent(t *testing.T) {
	l := New()
	l.Add([]record.Record{
		rec("a", "u", "openai", "gpt-4o", 100, t0),
		rec("b", "u", "openai", "gpt-4o-mini", 20, t0.Add(time.Minute)),
		rec("c", "u", "anthropic", "claude-3-opus", 3, t0.Add(15*time.Minute)), // the next day
		rec("d", "v", "openai", "gpt-4o", 1000, t0),
		{RequestID: "e", UserID: "u", Provider: "x", Model: "unpriced", Timestamp: t0},
	})
	day := t0.Truncate(24 * time.Hour)
	f := func(user, provider, model string, from, to time.Time, want usd.Amount) {
		t.Helper()
		if got := l.Spent(user, provider, model, from, to); got != want {
			t.Fatalf("Spent(%q, %q, %q, %s, %s) = %d, want %d", user, provider, model, from, to, got, want)
		}
	}
	f("u", "", "", day, day.Add(24*time.Hour), 120)
	f("u", "", "", day.Add(24*time.Hour), day.Add(48*time.Hour), 3)
	f("u", "openai", "", day, day.Add(48*time.Hour), 120)
	f("u", "", "GPT-4O", day, day.Add(48*time.Hour), 100)
	f("u", "", "gpt-4o*", day, day.Add(48*time.Hour), 120)
	f("u", "anthropic", "", day, day.Add(24*time.Hour), 0)
	f("v", "", "", day, day.Add(24*time.Hour), 1000)
	f("w", "", "", day, day.Add(24*time.Hour), 0)
	if n := l.Len(); n != 4 {
		t.Fatalf("%d slots, want 4 (unpriced records take none)", n)
	}
	l.Remove([]record.Record{rec("a", "u", "openai", "gpt-4o", 100, t0), rec("d", "v", "openai", "gpt-4o", 1000, t0)})
	f("u", "", "", day, day.Add(24*time.Hour), 20)
	f("v", "", "", day, day.Add(24*time.Hour), 0)
	if n := l.Len(); n != 2 {
		t.Fatalf("%d slots after the removal, want 2", n)
	}
}

// TestQueue: records count from Enqueue to their Commit; a refused
// Enqueue counts nothing.
func TestQueue(t *testing.T) {
	l := New()
	q := l.Queue(store.NewMemoryQueue(3))
	day := t0.Truncate(24 * time.Hour)
	spent := func() usd.Amount { return l.Spent("u", "", "", day, day.Add(24*time.Hour)) }
	if err := q.Enqueue([]record.Record{rec("a", "u", "p", "m", 5, t0), rec("b", "u", "p", "m", 7, t0)}); err != nil {
		t.Fatal(err)
	}
	if got := spent(); got != 12 {
		t.Fatalf("pending %d, want 12", got)
	}
	if err := q.Enqueue([]record.Record{rec("c", "u", "p", "m", 1, t0), rec("d", "u", "p", "m", 1, t0)}); err == nil {
		t.Fatal("a full queue took two more records")
	}
	if got := spent(); got != 12 {
		t.Fatalf("pending %d after a refused enqueue, want 12", got)
	}
	recs, err := q.Peek(1)
	if err != nil || len(recs) != 1 {
		t.Fatal(recs, err)
	}
	if got := spent(); got != 12 {
		t.Fatalf("pending %d after a peek, want 12", got)
	}
	if err := q.Commit(1); err != nil {
		t.Fatal(err)
	}
	if got := spent(); got != 7 {
		t.Fatalf("pending %d after committing the first, want 7", got)
	}
}

func TestSource(t *testing.T) {
	l := New()
	l.Add([]record.Record{rec("a", "u", "openai", "gpt-4o", 100, t0)})
	var asked []string
	src := &Source{Ledger: l, DB: func(_ context.Context, q usage.SpendQuery) ([]usage.ModelSpend, error) {
		asked = append(asked, q.UserID+"/"+q.Provider+"/"+q.Model)
		switch q.UserID {
		case "down":
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
		case "overflow":
			return nil, errors.New("ERROR: bigint out of range (SQLSTATE 22003)")
		}
		return []usage.ModelSpend{{Provider: "openai", Model: "gpt-4o", Spent: 5000}, {Provider: "openai", Model: "gpt-4.1", Spent: 7}}, nil
	}}
	day := t0.Truncate(24 * time.Hour)
	sum := func(groups []limiter.Spend) int64 {
		n := int64(0)
		for _, g := range groups {
			n += g.NanoUSD
		}
		return n
	}
	got, err := src.Spent("u", limiter.Scope{Provider: "openai", Model: "gpt-*"}, day, day.Add(24*time.Hour))
	if err != nil || sum(got) != 5107 || len(got) != 3 {
		t.Fatalf("Spent = %+v, %v; want 5107 in 3 groups (the ledger's gpt-4o apart from the database's)", got, err)
	}
	if len(asked) != 1 || asked[0] != "u/openai/gpt-*" {
		t.Fatalf("asked the database %v", asked)
	}
	// A query that fails for one user makes no backoff for the others.
	if _, err := src.Spent("overflow", limiter.Scope{}, day, day.Add(time.Hour)); err == nil {
		t.Fatal("a query error was not returned")
	}
	if _, err := src.Spent("u", limiter.Scope{}, day, day.Add(time.Hour)); err != nil {
		t.Fatalf("after another user's query failed: %v", err)
	}
	if _, err := src.Spent("down", limiter.Scope{}, day, day.Add(time.Hour)); err == nil {
		t.Fatal("a database error was not returned")
	}
	// Within the backoff the database is not asked again: a hung one
	// costs one timeout, not one per check.
	n := len(asked)
	if _, err := src.Spent("u", limiter.Scope{}, day, day.Add(time.Hour)); err == nil || !strings.Contains(err.Error(), "connection refused") || len(asked) != n {
		t.Fatalf("within the backoff: %v, asked %d more times", err, len(asked)-n)
	}
	src.Backoff = time.Nanosecond
	if _, err := src.Spent("u", limiter.Scope{}, day, day.Add(time.Hour)); err != nil || len(asked) != n+1 {
		t.Fatalf("after the backoff: %v, asked %d more times", err, len(asked)-n)
	}
	// Without a database the pending records are all there is.
	got, err = (&Source{Ledger: l}).Spent("u", limiter.Scope{}, day, day.Add(24*time.Hour))
	if err != nil || sum(got) != 100 || got[0].Provider != "openai" || got[0].Model != "gpt-4o" {
		t.Fatalf("Spent without a database = %+v, %v", got, err)
	}
}

// TestSpentSaturates: records may claim a billion dollars each; their
// sums stay at the most a budget counts instead of wrapping negative.
func TestSpentSaturates(t *testing.T) {
	l := New()
	var recs []record.Record
	for i := 0; i < 2000; i++ {
		recs = append(recs, rec(fmt.Sprint(i), "u", "openai", "gpt-4o", usd.Max, t0))
	}
	l.Add(recs)
	day := t0.Truncate(24 * time.Hour)
	if got := l.Spent("u", "", "", day, day.Add(24*time.Hour)); got != limiter.MaxSpend {
		t.Fatalf("Spent = %d, want %d", got, int64(limiter.MaxSpend))
	}
	l.Remove(recs[:1999])
	if got := l.Spent("u", "", "", day, day.Add(24*time.Hour)); got <= 0 {
		t.Fatalf("Spent after removing all but one = %d, want the saturated sum kept", got)
	}
	l.Remove(recs[1999:])
	if n := l.Len(); n != 0 {
		t.Fatalf("%d slots left after every record went", n)
	}
}

// TestSetEnabled: a ledger that is off counts nothing, and forgets what
// it had; records removed that it never counted change nothing.
func TestSetEnabled(t *testing.T) {
	l := New()
	day := t0.Truncate(24 * time.Hour)
	spent := func() usd.Amount { return l.Spent("u", "", "", day, day.Add(24*time.Hour)) }
	a, b := rec("a", "u", "p", "m", 5, t0), rec("b", "u", "p", "m", 7, t0)
	l.Add([]record.Record{a})
	l.SetEnabled(false)
	if got, n := spent(), l.Len(); got != 0 || n != 0 {
		t.Fatalf("off: spent %d in %d slots, want nothing", got, n)
	}
	l.Add([]record.Record{b})
	if n := l.Len(); n != 0 {
		t.Fatalf("off: counted a record (%d slots)", n)
	}
	l.SetEnabled(true)
	l.Remove([]record.Record{a, b}) // counted before, then forgotten
	l.Add([]record.Record{b})
	if got := spent(); got != 7 {
		t.Fatalf("on again: spent %d, want 7", got)
	}
	l.SetEnabled(true) // no change: keeps what it has
	if got := spent(); got != 7 {
		t.Fatalf("enabled twice: spent %d, want 7", got)
	}
}

// TestStoredKeptUntilConfirmed: with a shared store, a stored record
// leaves the pending ones but is kept, with the time it was stored,
// until the store confirms its state after that time.
func TestStoredKeptUntilConfirmed(t *testing.T) {
	l := New()
	var confirmed time.Time
	l.SetConfirmed(func() time.Time { return confirmed })
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	q := l.Queue(store.NewMemoryQueue(10))
	r := rec("a", "u", "openai", "gpt-4o", 100, t0)
	if err := q.Enqueue([]record.Record{r}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Peek(10); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	if err := q.Commit(1); err != nil {
		t.Fatal(err)
	}
	from, to := t0.Add(-time.Hour), t0.Add(time.Hour)
	if got := l.Spent("u", "", "", from, to); got != 0 {
		t.Fatalf("pending after the commit: %d, want 0", got)
	}
	got := l.Unconfirmed(Owned("u", ""), "", "", from, to)
	if len(got) != 1 || got[0].Spends[0].NanoUSD != 100 || got[0].At.Before(before) {
		t.Fatalf("unconfirmed %+v, want one batch of 100 stored after %v", got, before)
	}
	confirmed = time.Now()
	if got := l.Unconfirmed(Owned("u", ""), "", "", from, to); len(got) != 0 {
		t.Fatalf("unconfirmed after a confirmation: %+v", got)
	}
}

// TestCopiesOfARecordCountOnce: a record enqueued twice (a client's
// retry) counts once while either copy is pending.
func TestCopiesOfARecordCountOnce(t *testing.T) {
	l := New()
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	r := rec("a", "u", "openai", "gpt-4o", 100, t0)
	l.Add([]record.Record{r})
	l.Add([]record.Record{r})
	from, to := t0.Add(-time.Hour), t0.Add(time.Hour)
	if got := l.Spent("u", "", "", from, to); got != 100 {
		t.Fatalf("two copies pending: %d, want 100", got)
	}
	sums, records := l.PendingByID(Owned("u", ""), "", "", from.Unix(), to.Unix())
	if len(sums) != 0 || len(records) != 1 || records[0].RequestID != "a" || records[0].NanoUSD != 100 {
		t.Fatalf("by request_id: sums %+v, records %+v; want the one record named", sums, records)
	}
	l.Remove([]record.Record{r})
	if got := l.Spent("u", "", "", from, to); got != 100 {
		t.Fatalf("one copy stored, one pending: %d, want 100", got)
	}
	l.Remove([]record.Record{r})
	if got := l.Spent("u", "", "", from, to); got != 0 || l.Len() != 0 {
		t.Fatalf("both stored: %d pending in %d slots, want 0", got, l.Len())
	}
}
