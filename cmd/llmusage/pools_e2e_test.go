package main

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/internal/redistest"
	"github.com/llmusage/llmusage/internal/sidecartest"
)

// issueLimits is the limits file of issue [2/6], as written there.
const issueLimits = `limits:
  - limit_type: minute        # each user, as today
    requests: 30
  - provider: groq            # Groq's account quota, all users together
    limit_type: minute
    requests: 30
    per: all
  - limit_type: month         # the whole bill
    usd: 500
    per: all
  - team_id: search           # team search's budget, shared by its users
    limit_type: month
    usd: 1000
    per: team
  - team_id: search           # and each of its users at most $20 a day
    limit_type: day
    usd: 20
`

// TestGroqAccountQuotaAcrossSidecars: three sidecars sharing Redis (one
// server, then a cluster, where the pool's keys and each user's live in
// different slots) admit Groq's 30 a minute across 60 users checking
// once each from several connections: 30 plus the refill over the run,
// never more.
func TestGroqAccountQuotaAcrossSidecars(t *testing.T) {
	for _, topo := range []string{"standalone", "cluster"} {
		t.Run(topo, func(t *testing.T) {
			var flags []string
			if topo == "cluster" {
				flags = []string{"--redis-url", redistest.StartCluster(t, 3).URL(), "--redis-cluster"}
			} else {
				flags = []string{"--redis-url", redistest.Start(t).URL()}
			}
			sidecars := replicas(t, 3, issueLimits, flags...)
			for round := range 3 {
				start := time.Now()
				var admitted, other atomic.Int64
				var wg sync.WaitGroup
				for c := range 6 { // connections, each going round the sidecars
					wg.Add(1)
					go func() {
						defer wg.Done()
						for u := c; u < 60; u += 6 {
							body := fmt.Sprintf(`{"user_id":"r%d-user-%d","provider":"groq","model":"llama-3.1-8b-instant","tokens":10}`, round, u)
							code, _, _ := sidecars[u%3].PostJSON(t, "/v1/check", body)
							switch code {
							case http.StatusOK:
								admitted.Add(1)
							case http.StatusTooManyRequests:
							default:
								other.Add(1)
							}
						}
					}()
				}
				wg.Wait()
				if other.Load() > 0 {
					t.Fatalf("%d checks got neither 200 nor 429", other.Load())
				}
				// Round 0 starts from a full bucket; later rounds from what
				// refilled since (30 a minute, half a check a second).
				capacity := int64(30)
				if round > 0 {
					capacity = 0
				}
				elapsed := time.Since(start)
				assertNoFallback(t, sidecars)
				if round == 0 {
					assertAdmitted(t, "60 users, Groq's 30 a minute, 3 sidecars", admitted.Load(), capacity, 30, elapsed)
				} else if float64(admitted.Load()) > 30*(elapsed+time.Second).Minutes()+1 {
					t.Fatalf("round %d: %d admitted by an exhausted pool in %s", round, admitted.Load(), elapsed)
				}
			}
			assertNoFallback(t, sidecars)
			// Every sidecar reports the pool the same, in /v1/limits and
			// in one pool series with an empty user.
			for i, s := range sidecars {
				_, body := s.Get(t, "/v1/limits?user_id=someone&provider=groq")
				pool := findLimit(t, body, "all", "requests")
				if pool["pool"] != "all" || pool["limit"] != float64(30) || pool["remaining"].(float64) > 2 {
					t.Fatalf("sidecar %d: pool %v", i, pool)
				}
				metrics := s.Scrape(t)
				if !strings.Contains(metrics, `llm_quota_limit{limit_type="minute",model="",per="all",provider="groq",team="",unit="requests",user=""} 30`) {
					t.Fatalf("sidecar %d: no pool series\n%s", i, grepLines(metrics, "llm_quota_limit"))
				}
			}
		})
	}
}

// TestRulesOfEveryLevel: /v1/rules names the rules of every level a
// call of bob for team search on groq passes, with their sources.
func TestRulesOfEveryLevel(t *testing.T) {
	s := sidecartest.Start(t, sidecartest.Options{Limits: issueLimits})
	code, body := s.Get(t, "/v1/rules?user_id=bob&team_id=search&provider=groq")
	if code != http.StatusOK {
		t.Fatalf("%d %v", code, body)
	}
	var got []string
	for _, r := range body["applicable"].([]any) {
		r := r.(map[string]any)
		per, _ := r["per"].(string)
		if per == "" {
			per = "user"
		}
		src := r["source"].(string)
		got = append(got, fmt.Sprintf("%s %s %s %s", per, r["limit_type"], r["unit"], src[strings.LastIndex(src, ":")+1:]))
	}
	want := "user minute requests 2, user day usd 15, team month usd 11, all minute requests 4, all month usd 8"
	if strings.Join(got, ", ") != want {
		t.Fatalf("applicable rules:\n got  %s\n want %s", strings.Join(got, ", "), want)
	}
	if body["team_id"] != "search" {
		t.Fatalf("team_id %v", body["team_id"])
	}
	// A bad team_id is a 400 naming it.
	code, body = s.Get(t, "/v1/rules?user_id=bob&team_id=%01")
	if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body), "team_id") {
		t.Fatalf("bad team_id: %d %v", code, body)
	}
}

// TestTeamPoolBudgetAcrossSidecars, on Postgres and Redis: team
// search's $1 daily pool admits exactly 10 of 20 concurrent $0.10 checks
// of its users over three sidecars; another team's user passes; the
// records spend the pool; after a sidecar's kill -9 and restart, and
// after Redis lost everything, the pool's spend is rebuilt from the
// team's records and the team stays refused.
func TestTeamPoolBudgetAcrossSidecars(t *testing.T) {
	srv := redistest.Start(t)
	sidecars := sidecartest.StartN(t, 3, sidecartest.Options{
		Limits:      "limits:\n  - team_id: search\n    limit_type: day\n    usd: 1\n    per: team\nprices:\n  - model: house-model\n    input: 0\n    output: 1000\n",
		DatabaseURL: pgtest.URL(t),
		Flags:       []string{"--redis-url", srv.URL(), "--redis-timeout", "2s", "--flush-interval", "50ms"},
	})
	check := func(s *sidecartest.Sidecar, user, team, id string) int {
		return checkStatus(t, s, fmt.Sprintf(`{"user_id":%q,"team_id":%q,"model":"house-model","max_tokens":100,"request_id":%q}`, user, team, id))
	}
	var admittedIDs sync.Map
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("team-call-%d", i)
			if check(sidecars[i%3], fmt.Sprintf("member-%d", i), "search", id) == http.StatusOK {
				admitted.Add(1)
				admittedIDs.Store(id, i)
			}
		}()
	}
	wg.Wait()
	assertNoFallback(t, sidecars)
	if n := admitted.Load(); n != 10 {
		t.Fatalf("%d of 20 checks of $0.10 admitted by team search's $1 pool over 3 sidecars, want exactly 10", n)
	}
	if check(sidecars[0], "member-0", "ads", "ads-1") != http.StatusOK {
		t.Fatal("a user of another team was refused")
	}
	// The admitted calls' records, each on another sidecar than its check.
	admittedIDs.Range(func(id, i any) bool {
		body := fmt.Sprintf(`{"user_id":"member-%d","team_id":"search","model":"house-model","completion_tokens":100,"request_id":%q}`, i, id)
		if code, _, out := sidecars[(i.(int)+1)%3].PostJSON(t, "/v1/calls", body); code != http.StatusAccepted {
			t.Fatalf("record: %d %v", code, out)
		}
		return true
	})
	refusedEverywhere := func(when string) {
		t.Helper()
		for i, s := range sidecars {
			if code := check(s, "newcomer", "search", ""); code != http.StatusTooManyRequests {
				t.Fatalf("%s: sidecar %d admitted a new member of team search past its spent pool\n%s", when, i, s.Log())
			}
		}
	}
	refusedEverywhere("after the records")
	sidecars[1].Kill9(t)
	sidecars[1].Restart(t)
	refusedEverywhere("after a kill -9 and a restart")
	sidecartest.WaitFor(t, 10*time.Second, func() bool {
		_, st := sidecars[0].Get(t, "/api/llm/usage/stats?team_id=search")
		return st["total_calls"] == float64(10)
	}, "the team's records were not stored")
	srv.Do(t, "FLUSHALL")
	time.Sleep(2500 * time.Millisecond) // the registry finds the loss
	refusedEverywhere("after Redis lost the pool")
	_, body := sidecars[2].Get(t, "/v1/limits?user_id=newcomer&team_id=search")
	pool := findLimit(t, body, "team", "usd")
	if pool["pool"] != "team:search" || pool["remaining"] != float64(0) || pool["team_id"] != "search" {
		t.Fatalf("pool after the loss: %v", pool)
	}
}

// findLimit returns the status of a pool of per and unit in a /v1/limits answer.
func findLimit(t *testing.T, body map[string]any, per, unit string) map[string]any {
	t.Helper()
	for _, l := range body["limits"].([]any) {
		l := l.(map[string]any)
		if l["per"] == per && l["unit"] == unit {
			return l
		}
	}
	t.Fatalf("no %s %s pool in %v", per, unit, body)
	return nil
}

// grepLines keeps the lines of s holding substr.
func grepLines(s, substr string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestSeedRateLimitSaysThePool: the seed's check_rate_limit answer
// (/api/llm/usage/rate-limit/{type}) is the tightest of the user's limit
// and the pools a call needs: a user with all their own requests left
// cannot call once a shared or a team pool is spent.
func TestSeedRateLimitSaysThePool(t *testing.T) {
	s := sidecartest.Start(t, sidecartest.Options{Limits: `limits:
  - limit_type: minute
    requests: 30
  - limit_type: minute
    requests: 3
    per: team
  - limit_type: hour
    requests: 2
    per: all
`})
	for i := range 2 {
		if code := checkStatus(t, s, fmt.Sprintf(`{"user_id":"other-%d","team_id":"search","model":"m"}`, i)); code != http.StatusOK {
			t.Fatalf("check %d: %d", i, code)
		}
	}
	_, minute := s.Get(t, "/api/llm/usage/rate-limit/minute?user_id=fresh&team_id=search")
	if minute["can_call"] != true || minute["limit"] != float64(3) || minute["remaining"] != float64(1) {
		t.Fatalf("minute, team search's pool of 3 with 2 used: %v", minute)
	}
	_, hour := s.Get(t, "/api/llm/usage/rate-limit/hour?user_id=fresh")
	if hour["can_call"] != false || hour["limit"] != float64(2) || hour["remaining"] != float64(0) {
		t.Fatalf("hour, the shared pool of 2 spent: %v", hour)
	}
	if code, body := s.Get(t, "/api/llm/usage/rate-limits?user_id=fresh&team_id=%00"); code != http.StatusBadRequest {
		t.Fatalf("a bad team_id: %d %v", code, body)
	}
}
