package limiter

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// groqPool is the Groq account quota beside a per-user limit.
var groqPool = []Rule{
	{Window: Minute, Unit: Requests, Limit: 30, Source: "each user"},
	{Provider: "groq", Window: Minute, Unit: Requests, Limit: 30, Per: PerAll, Source: "groq account"},
}

func TestSharedPoolAdmitsItsLimitAcrossUsers(t *testing.T) {
	for round := range 3 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			l, _ := newTestLimiter(t, groqPool...)
			var admitted atomic.Int64
			var wg sync.WaitGroup
			for u := range 60 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					d := mustCheck(t, l, Request{UserID: fmt.Sprintf("user-%d", u), Provider: "groq", Model: "llama"})
					if d.Allowed {
						admitted.Add(1)
					}
				}()
			}
			wg.Wait()
			if got := admitted.Load(); got != 30 {
				t.Fatalf("60 users checked once each against a shared 30/minute: %d admitted, want 30", got)
			}
			// Another provider is not in the pool; each user still has 29.
			if d := mustCheck(t, l, Request{UserID: "user-1", Provider: "openai", Model: "gpt"}); !d.Allowed {
				t.Fatalf("a call outside the pool's scope was refused: %+v", d)
			}
		})
	}
}

func TestTeamPoolBudget(t *testing.T) {
	rules := []Rule{
		{TeamID: "search", Window: Day, Unit: USD, Limit: 1 * dollar, Per: PerTeam, Source: "team search"},
		{Window: Day, Unit: USD, Limit: 5 * dollar, Source: "each user"},
	}
	l, _ := newTestLimiter(t, rules...)
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for u := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := mustCheck(t, l, Request{UserID: fmt.Sprintf("u%d", u), TeamID: "search", Model: "m", Cost: dollar / 10})
			if d.Allowed {
				admitted.Add(1)
			}
		}()
	}
	wg.Wait()
	if got := admitted.Load(); got != 10 {
		t.Fatalf("20 users of a $1 team pool checking $0.10: %d admitted, want 10", got)
	}
	// Another team, and a call for no team, are not in team search's pool.
	for _, team := range []string{"ads", ""} {
		if d := mustCheck(t, l, Request{UserID: "u1", TeamID: team, Model: "m", Cost: dollar / 10}); !d.Allowed {
			t.Fatalf("team %q refused by another team's pool: %+v", team, d)
		}
	}
	d := mustCheck(t, l, Request{UserID: "u99", TeamID: "search", Model: "m", Cost: dollar / 10})
	if d.Allowed {
		t.Fatal("a new user of team search passed its spent pool")
	}
	pool := findStatus(t, d.Limits, PerTeam)
	if pool.Pool != "team:search" || pool.Remaining != 0 || pool.TeamID != "search" {
		t.Fatalf("pool status %+v", pool)
	}
}

func TestPerTeamRuleWithoutTeamScopeGivesEachTeamAPool(t *testing.T) {
	l, _ := newTestLimiter(t, Rule{Window: Minute, Unit: Requests, Limit: 2, Per: PerTeam})
	for _, team := range []string{"a", "b"} {
		for i := range 3 {
			d := mustCheck(t, l, Request{UserID: fmt.Sprintf("%s-user-%d", team, i), TeamID: team})
			if d.Allowed != (i < 2) {
				t.Fatalf("team %s check %d: allowed %v", team, i, d.Allowed)
			}
		}
	}
}

// A check that its user's bucket allows and a pool refuses debits
// neither: the levels read back as before.
func TestRefusedByPoolDebitsNothing(t *testing.T) {
	rules := []Rule{
		{Window: Minute, Unit: Requests, Limit: 10},
		{Window: Day, Unit: USD, Limit: 2 * dollar},
		{Window: Day, Unit: USD, Limit: 1 * dollar, Per: PerAll},
	}
	for _, withID := range []bool{false, true} {
		l, _ := newTestLimiter(t, rules...)
		id := func(s string) string {
			if withID {
				return s
			}
			return ""
		}
		if d := mustCheck(t, l, Request{UserID: "other", Model: "m", Cost: dollar * 9 / 10, RequestID: id("first")}); !d.Allowed {
			t.Fatal("first check refused")
		}
		before := mustLimits(t, l, "u", "", "")
		d := mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: dollar / 5, RequestID: id("second")})
		if d.Allowed {
			t.Fatal("a check past the shared pool was allowed")
		}
		after := mustLimits(t, l, "u", "", "")
		if fmt.Sprint(before) != fmt.Sprint(after) {
			t.Fatalf("with request_id %v: levels changed by a refused check:\n before %v\n after  %v", withID, before, after)
		}
		// The decision reports every level, the refusing pool's included.
		if p := findStatus(t, d.Limits, PerAll); p.Remaining != dollar/10 || p.Pool != "all" {
			t.Fatalf("pool status %+v", p)
		}
		if d.RetryAfter <= 0 {
			t.Fatalf("no retry_after: %+v", d)
		}
	}
}

// A record is charged to every applicable bucket: the user's and the pools.
func TestRecordChargesEveryLevel(t *testing.T) {
	l, c := newTestLimiter(t,
		Rule{Window: Day, Unit: USD, Limit: 10 * dollar},
		Rule{Window: Day, Unit: USD, Limit: 10 * dollar, Per: PerTeam},
		Rule{Window: Day, Unit: USD, Limit: 10 * dollar, Per: PerAll})
	if err := l.Record(Usage{UserID: "u", TeamID: "t", Model: "m", Cost: 3 * dollar, HasCost: true, Timestamp: c.Now()}); err != nil {
		t.Fatal(err)
	}
	st, err := l.Limits("v", "t", "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		want := int64(7 * dollar)
		if s.Per == PerUser {
			want = 10 * dollar // v's own budget is untouched
		}
		if s.Remaining != want {
			t.Fatalf("%s budget: %d left, want %d", s.Per, s.Remaining, want)
		}
	}
	if len(st) != 3 {
		t.Fatalf("%d statuses, want the user's, the team's and the shared budget", len(st))
	}
}

// Within a level the most specific rule wins; across levels every one applies.
func TestApplicableByLevel(t *testing.T) {
	l, _ := newTestLimiter(t,
		Rule{Window: Minute, Unit: Requests, Limit: 30, Source: "1"},
		Rule{Provider: "groq", Window: Minute, Unit: Requests, Limit: 30, Per: PerAll, Source: "2"},
		Rule{Window: Month, Unit: USD, Limit: 500 * dollar, Per: PerAll, Source: "3"},
		Rule{TeamID: "search", Window: Month, Unit: USD, Limit: 1000 * dollar, Per: PerTeam, Source: "4"},
		Rule{TeamID: "search", Window: Day, Unit: USD, Limit: 20 * dollar, Source: "5"},
		Rule{Window: Day, Unit: USD, Limit: 50 * dollar, Source: "6"})
	got := func(user, team, provider string) string {
		var s []string
		for _, r := range l.Applicable(user, team, provider, "m") {
			s = append(s, r.Per.String()+":"+r.Source)
		}
		return strings.Join(s, " ")
	}
	if g := got("bob", "search", "groq"); g != "user:1 user:5 team:4 all:2 all:3" {
		t.Fatalf("bob of search on groq: %s", g)
	}
	if g := got("bob", "", "openai"); g != "user:1 user:6 all:3" {
		t.Fatalf("bob without a team on openai: %s", g)
	}
}

func TestPoolRuleValidation(t *testing.T) {
	for _, r := range []Rule{
		{UserID: "bob", Window: Minute, Unit: Requests, Limit: 1, Per: PerAll},
		{UserID: "bob", Window: Minute, Unit: Requests, Limit: 1, Per: PerTeam},
		{Window: Minute, Unit: Requests, Limit: 1, Per: numPers},
	} {
		if _, err := New([]Rule{r}, Options{}); err == nil {
			t.Fatalf("%+v accepted", r)
		}
	}
	if _, err := ParsePer("everyone"); err == nil || !strings.Contains(err.Error(), "user, team, all") {
		t.Fatalf("ParsePer: %v", err)
	}
	// The same scope at two levels is two rules, not a duplicate.
	if _, err := New([]Rule{{Window: Minute, Unit: Requests, Limit: 1}, {Window: Minute, Unit: Requests, Limit: 1, Per: PerAll}}, Options{}); err != nil {
		t.Fatal(err)
	}
}

// A pool's budget learns its spend from every user's records.
func TestPoolBudgetLearnsSpendOfEveryUser(t *testing.T) {
	var asked []string
	src := &spendFunc{fn: func(owner string, sc Scope, from, to time.Time) (int64, error) {
		asked = append(asked, PoolKey(owner))
		if owner == AllOwner {
			return dollar * 9 / 10, nil
		}
		return 0, nil
	}}
	l := mustNew(t, []Rule{{Window: Day, Unit: USD, Limit: 1 * dollar, Per: PerAll}}, Options{Clock: newManualClock(), Spend: src})
	if d := mustCheck(t, l, Request{UserID: "u", Model: "m", Cost: dollar / 5}); d.Allowed {
		t.Fatalf("a check past a pool's learnt spend passed: %+v", d)
	}
	if strings.Join(asked, ",") != "all" {
		t.Fatalf("spend asked of %v, want the shared pool's", asked)
	}
}

func TestParseOwner(t *testing.T) {
	for _, c := range []struct {
		owner, key string
		per        Per
	}{{"bob", "user:bob", PerUser}, {TeamOwner("search"), "team:search", PerTeam}, {AllOwner, "all", PerAll}} {
		if per, _ := ParseOwner(c.owner); per != c.per || PoolKey(c.owner) != c.key {
			t.Fatalf("%q: %s %s", c.owner, per, PoolKey(c.owner))
		}
	}
}

func findStatus(t *testing.T, st []Status, per Per) Status {
	t.Helper()
	for _, s := range st {
		if s.Per == per {
			return s
		}
	}
	t.Fatalf("no %s status in %+v", per, st)
	return Status{}
}
