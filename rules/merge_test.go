package rules

import (
	"fmt"
	"strings"
	"testing"

	"github.com/llmusage/llmusage/limiter"
)

// seededRows are the rows the migrations seed, unchanged.
var seededRows = []Row{
	{Table: ConfigsTable, ID: "1", LimitType: "minute", LimitValue: 30, Seeded: true},
	{Table: ConfigsTable, ID: "2", LimitType: "day", LimitValue: 14400, Seeded: true},
}

func TestMerge(t *testing.T) {
	f := func(fileYAML string, rows []Row, wantInForce, wantShadowed string) {
		t.Helper()
		var file *File
		if fileYAML != "" {
			var err error
			if file, err = ParseFile("limits.yaml", []byte(fileYAML)); err != nil {
				t.Fatal(err)
			}
		}
		set := Merge(file, rows)
		var inForce, shadowed []string
		for _, r := range set.InForce {
			inForce = append(inForce, describe(r))
		}
		for _, s := range set.Shadowed {
			shadowed = append(shadowed, describe(s.Rule)+" by "+s.By)
		}
		if got := strings.Join(inForce, "; "); got != wantInForce {
			t.Fatalf("in force:\n%s\nwant:\n%s", got, wantInForce)
		}
		if got := strings.Join(shadowed, "; "); got != wantShadowed {
			t.Fatalf("shadowed:\n%s\nwant:\n%s", got, wantShadowed)
		}
		// Whatever the sources, the limiter takes the result.
		if _, err := limiter.New(set.InForce, limiter.Options{}); err != nil {
			t.Fatalf("limiter refuses the merged rules: %s", err)
		}
	}
	const minute3 = "limits:\n  - limit_type: minute\n    requests: 3\n"

	// No file: the seeded defaults apply, as before.
	f("", seededRows,
		"minute requests 30 [llm_rate_limit_configs id 1 (seeded default)]; day requests 14400 [llm_rate_limit_configs id 2 (seeded default)]", "")
	// A file with limits: every seeded default yields, not only those of its scopes.
	f(minute3, seededRows,
		"minute requests 3 [limits.yaml:2]",
		"minute requests 30 [llm_rate_limit_configs id 1 (seeded default)] by the limits file limits.yaml; "+
			"day requests 14400 [llm_rate_limit_configs id 2 (seeded default)] by the limits file limits.yaml")
	// A file with only provider prefixes sets no limits: the defaults stay.
	f("providers:\n  - prefix: llama-\n    provider: groq\n", seededRows,
		"minute requests 30 [llm_rate_limit_configs id 1 (seeded default)]; day requests 14400 [llm_rate_limit_configs id 2 (seeded default)]", "")

	// The seed's UPDATE makes the minute row an operator's: it beats the file.
	updated := []Row{
		{Table: ConfigsTable, ID: "1", LimitType: "minute", LimitValue: 100},
		seededRows[1],
	}
	f(minute3, updated,
		"minute requests 100 [llm_rate_limit_configs id 1]",
		"day requests 14400 [llm_rate_limit_configs id 2 (seeded default)] by the limits file limits.yaml; "+
			"minute requests 3 [limits.yaml:2] by llm_rate_limit_configs id 1")

	// Among rows of one scope the newest wins; an operator's row beats a
	// seeded one whatever their ids; other scopes leave the file alone.
	rows := []Row{
		{Table: ConfigsTable, ID: "1", LimitType: "minute", LimitValue: 30, Seeded: true},
		{Table: ConfigsTable, ID: "7", LimitType: "minute", LimitValue: 50},
		{Table: UserLimitsTable, ID: "3", UserID: "alice", LimitType: "minute", LimitValue: 200},
		{Table: UserLimitsTable, ID: "4", UserID: "alice", LimitType: "minute", LimitValue: 250},
		{Table: UserLimitsTable, ID: "5", UserID: "alice", LimitType: "minute", Unit: "tokens", LimitValue: 9000, Provider: "Azure"},
	}
	f("limits:\n  - limit_type: hour\n    tokens: 500\n", rows,
		"hour tokens 500 [limits.yaml:2]; minute requests 50 [llm_rate_limit_configs id 7]; "+
			"alice/ minute requests 250 [llm_rate_limits id 4]; alice/azure.ai.openai minute tokens 9000 [llm_rate_limits id 5]",
		"minute requests 30 [llm_rate_limit_configs id 1 (seeded default)] by llm_rate_limit_configs id 7; "+
			"alice/ minute requests 200 [llm_rate_limits id 3] by llm_rate_limits id 4")
	// Three rows of one scope: each loser names the final winner.
	f("", []Row{
		{Table: ConfigsTable, ID: "3", LimitType: "hour", LimitValue: 300},
		{Table: ConfigsTable, ID: "4", LimitType: " Hour ", LimitValue: 400},
		{Table: ConfigsTable, ID: "9", LimitType: "HOUR", LimitValue: 900},
	},
		"hour requests 900 [llm_rate_limit_configs id 9]",
		"hour requests 300 [llm_rate_limit_configs id 3] by llm_rate_limit_configs id 9; "+
			"hour requests 400 [llm_rate_limit_configs id 4] by llm_rate_limit_configs id 9")
	// The same, rows in the other order: the operator's row still wins over the seeded one.
	f("", []Row{rows[1], rows[0]},
		"minute requests 50 [llm_rate_limit_configs id 7]",
		"minute requests 30 [llm_rate_limit_configs id 1 (seeded default)] by llm_rate_limit_configs id 7")
}

func TestMergeSkipsInvalidRows(t *testing.T) {
	set := Merge(nil, []Row{
		{Table: UserLimitsTable, ID: "5", UserID: "u", LimitType: "fortnight", LimitValue: 1},
		{Table: UserLimitsTable, ID: "6", UserID: "u", LimitType: "minute", Unit: "dollars", LimitValue: 1},
		{Table: UserLimitsTable, ID: "8", UserID: "u", LimitType: "minute", LimitValue: 0},
		{Table: UserLimitsTable, ID: "9", UserID: "u", LimitType: "minute", Unit: " Tokens ", LimitValue: 10},
		{Table: UserLimitsTable, ID: "10", UserID: "u", LimitType: "hour", Unit: "usd", LimitValue: 1},
		{Table: UserLimitsTable, ID: "11", UserID: "u", LimitType: "month", Unit: "usd", LimitUSD: ptr("a lot")},
		{Table: UserLimitsTable, ID: "12", UserID: "u", LimitType: "week", Unit: "tokens", LimitValue: 5},
		// A budget in whole dollars from limit_value, one in cents from limit_usd.
		{Table: UserLimitsTable, ID: "13", UserID: "u", LimitType: "month", Unit: "usd", LimitValue: 50},
		{Table: UserLimitsTable, ID: "14", UserID: "u", LimitType: " Day ", Unit: "USD", LimitValue: 7, LimitUSD: ptr("0.01")},
		// A concurrency limit, whatever its (NOT NULL) limit_type says, and one of none.
		{Table: UserLimitsTable, ID: "15", UserID: "u", LimitType: "concurrent", Unit: "concurrent", LimitValue: 3},
		{Table: UserLimitsTable, ID: "16", UserID: "u", LimitType: "minute", Unit: "Concurrent", LimitValue: 0},
	})
	var got []string
	for _, err := range set.Skipped {
		got = append(got, err.Error())
	}
	want := []string{
		`cannot use llm_rate_limits id 5: unknown limit_type "fortnight"; valid: second, minute, hour, day, week, month`,
		`cannot use llm_rate_limits id 6: unit "dollars" is not requests, tokens, usd or concurrent`,
		`cannot use llm_rate_limits id 8: requests must be between 1 and 1125899906842624, got 0`,
		`cannot use llm_rate_limits id 10: a usd budget counts a calendar day, week or month, not a hour`,
		`cannot use llm_rate_limits id 11: limit_usd: cannot parse "a lot" as USD: not a decimal number`,
		`cannot use llm_rate_limits id 12: limit_type week is a calendar window, for usd budgets only; limit tokens per day instead`,
		`cannot use llm_rate_limits id 16: concurrent must be between 1 and 100000, got 0`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("skipped:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(set.InForce) != 4 || set.InForce[0].Unit != limiter.Tokens ||
		set.InForce[1].Unit != limiter.USD || set.InForce[1].Limit != 50e9 || set.InForce[1].Window != limiter.Month ||
		set.InForce[2].Unit != limiter.USD || set.InForce[2].Limit != 1e7 || set.InForce[2].Window != limiter.Day ||
		set.InForce[3].Unit != limiter.Concurrent || set.InForce[3].Limit != 3 || set.InForce[3].Window != limiter.InFlight {
		t.Fatalf("in force: %+v, want the tokens rule, the two budgets and the concurrency limit", set.InForce)
	}
}

// describe writes a rule compactly: [user/provider ]window unit limit [source].
func describe(r limiter.Rule) string {
	scope := ""
	if r.UserID != "" || r.Provider != "" {
		scope = r.UserID + "/" + r.Provider + " "
	}
	if r.Model != "" {
		scope += "model=" + r.Model + " "
	}
	return fmt.Sprintf("%s%s %s %d [%s]", scope, r.Window, r.Unit, r.Limit, r.Source)
}

func TestDigest(t *testing.T) {
	digest := func(yaml string, rows ...Row) string {
		t.Helper()
		f, err := ParseFile("limits.yaml", []byte(yaml))
		if err != nil {
			t.Fatal(err)
		}
		return Merge(f, rows).Digest()
	}
	base := digest("limits:\n  - limit_type: minute\n    requests: 3\n")
	if len(base) != 64 {
		t.Fatalf("digest %q is not a hex SHA-256", base)
	}
	// Where a rule stands in the file does not count; what it says does.
	if got := digest("# a comment\n\nlimits:\n  - limit_type: minute\n    requests: 3\n"); got != base {
		t.Fatalf("a comment changed the digest")
	}
	for _, other := range []string{
		digest("limits:\n  - limit_type: minute\n    requests: 4\n"),
		digest("limits:\n  - limit_type: hour\n    requests: 3\n"),
		digest("limits:\n  - limit_type: minute\n    requests: 3\n    provider: openai\n"),
		digest("providers:\n  - prefix: llama-\n    provider: groq\nlimits:\n  - limit_type: minute\n    requests: 3\n"),
		digest("limits:\n  - limit_type: minute\n    requests: 3\n", Row{Table: UserLimitsTable, ID: "1", UserID: "a", LimitType: "day", LimitValue: 9}),
	} {
		if other == base {
			t.Fatal("different rules, same digest")
		}
	}
}

func ptr(s string) *string { return &s }
