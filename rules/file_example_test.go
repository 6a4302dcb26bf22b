package rules

import (
	"strings"
	"testing"

	"github.com/llmusage/llmusage/limiter"
)

// TestExampleLimitsFile keeps the shipped example loadable, with Groq's
// account quota as a pool beside the per-user defaults.
func TestExampleLimitsFile(t *testing.T) {
	cfg, err := LoadFile("../deploy/kubernetes/limits.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Rules) != 8 || len(cfg.Providers) != 1 {
		t.Fatalf("example file: %d rules and %d prefixes, want 8 and 1", len(cfg.Rules), len(cfg.Providers))
	}
	pools := 0
	for _, r := range cfg.Rules {
		if r.Per == limiter.PerAll && r.Provider == "groq" && r.Unit == limiter.Requests {
			pools++
		}
	}
	if pools != 2 {
		t.Fatalf("example file: %d Groq account rules (per: all), want the minute's and the day's", pools)
	}
}

// TestIssueExampleLoads: the limits file of issue [2/6], as written there.
func TestIssueExampleLoads(t *testing.T) {
	cfg, err := ParseFile("limits.yaml", []byte(`limits:
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
`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range cfg.Rules {
		got = append(got, r.Per.String()+"/"+r.TeamID)
	}
	if want := "user/ all/ all/ team/search user/search"; strings.Join(got, " ") != want {
		t.Fatalf("levels %s, want %s", strings.Join(got, " "), want)
	}
	// A bad value is told at its key's line; a bad combination at the
	// entry's.
	for _, bad := range []struct{ yaml, line, want string }{
		{"limits:\n  - limit_type: minute\n    requests: 1\n    per: everyone\n", "limits.yaml:4:", `unknown per "everyone"`},
		{"limits:\n  - user_id: bob\n    limit_type: minute\n    requests: 1\n    per: all\n", "limits.yaml:2:", "user_id"},
	} {
		if _, err := ParseFile("limits.yaml", []byte(bad.yaml)); err == nil || !strings.Contains(err.Error(), bad.want) || !strings.Contains(err.Error(), bad.line) {
			t.Fatalf("%q: error %v, want one naming %s and %q", bad.yaml, err, bad.line, bad.want)
		}
	}
}

// TestRowPerAndTeam: a database row's per and team_id columns make a
// pool as the limits file's do; a bad per names the row.
func TestRowPerAndTeam(t *testing.T) {
	r, err := Row{Table: ConfigsTable, ID: "7", TeamID: "search", Per: " Team ", LimitType: "month", Unit: "usd", LimitValue: 1000}.Rule()
	if err != nil {
		t.Fatal(err)
	}
	if r.Per != limiter.PerTeam || r.TeamID != "search" || r.Limit != 1000e9 {
		t.Fatalf("rule %+v", r)
	}
	if r, err := (Row{Table: ConfigsTable, ID: "8", LimitType: "minute", LimitValue: 3}).Rule(); err != nil || r.Per != limiter.PerUser {
		t.Fatalf("a row without per: %+v %v", r, err)
	}
	_, err = Row{Table: UserLimitsTable, ID: "9", UserID: "bob", Per: "all", LimitType: "minute", LimitValue: 3}.Rule()
	if err == nil || !strings.Contains(err.Error(), "llm_rate_limits id 9") || !strings.Contains(err.Error(), "user_id") {
		t.Fatalf("a user's row per all: %v", err)
	}
	_, err = Row{Table: ConfigsTable, ID: "10", Per: "everyone", LimitType: "minute", LimitValue: 3}.Rule()
	if err == nil || !strings.Contains(err.Error(), `unknown per "everyone"`) {
		t.Fatalf("a bad per: %v", err)
	}
}
