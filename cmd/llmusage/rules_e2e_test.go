package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "modernc.org/sqlite"

	"github.com/llmusage/llmusage/internal/pgtest"
	"github.com/llmusage/llmusage/internal/sidecartest"
)

// TestLimitsFileOnDefaultStore is the new user's first try: a limits file
// with 3 requests a minute on the embedded store, seeded defaults and all,
// admits three checks and refuses the fourth; the seed's UPDATE then lifts
// the limit within 2 seconds; a provider 'Azure' row limits checks sent
// with provider azure; /v1/rules explains each step.
func TestLimitsFileOnDefaultStore(t *testing.T) {
	s := sidecartest.Start(t, sidecartest.Options{Limits: "limits:\n  - limit_type: minute\n    requests: 3\n"})
	db, err := sql.Open("sqlite", filepath.Join(s.DataDir, "llmusage.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	exec := func(q string) {
		t.Helper()
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %s", q, err)
		}
	}
	checkRulesAfterChanges(t, s, exec, s.LimitsFile)
}

// TestLimitsFileOnPostgres is the same against Postgres, where the rows'
// changes arrive by NOTIFY.
func TestLimitsFileOnPostgres(t *testing.T) {
	dbURL := pgtest.URL(t)
	s := sidecartest.Start(t, sidecartest.Options{Limits: "limits:\n  - limit_type: minute\n    requests: 3\n", DatabaseURL: dbURL})
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	exec := func(q string) {
		t.Helper()
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %s", q, err)
		}
	}
	checkRulesAfterChanges(t, s, exec, s.LimitsFile)
}

func checkRulesAfterChanges(t *testing.T, s *sidecartest.Sidecar, exec func(string), file string) {
	t.Helper()
	codes := func(user, provider string, n int) string {
		t.Helper()
		var out []string
		for i := 0; i < n; i++ {
			code, _, body := s.PostJSON(t, "/v1/check", fmt.Sprintf(`{"user_id": %q, "model": "gpt-4o", "provider": %q}`, user, provider))
			if code != http.StatusOK && code != http.StatusTooManyRequests {
				t.Fatalf("check: %d %v", code, body)
			}
			out = append(out, fmt.Sprint(code))
		}
		return strings.Join(out, " ")
	}
	if got := codes("alice", "", 4); got != "200 200 200 429" {
		t.Fatalf("3/minute from the limits file, over the seeded 30/minute: %s, want 200 200 200 429", got)
	}
	rules := func(query string) string {
		t.Helper()
		code, body := s.Get(t, "/v1/rules"+query)
		if code != http.StatusOK {
			t.Fatalf("/v1/rules%s: %d %v", query, code, body)
		}
		b, _ := json.Marshal(body)
		return string(b)
	}
	if got, want := rules("?user_id=alice&model=gpt-4o"),
		`{"applicable":[{"limit":3,"limit_type":"minute","source":"`+file+`:2","unit":"requests"}],"model":"gpt-4o","provider":"openai","user_id":"alice"}`; got != want {
		t.Fatalf("/v1/rules for alice:\n%s\nwant:\n%s", got, want)
	}
	if got := rules(""); !strings.Contains(got, `"shadowed_by":"the limits file `) || !strings.Contains(got, `(seeded default)`) {
		t.Fatalf("/v1/rules does not show the seeded defaults yielding to the file: %s", got)
	}
	if strings.Contains(s.Log(), "limit rule shadowed by a rule of the same scope") {
		t.Fatalf("the seeded defaults yielding to the file are logged above debug:\n%s", s.Log())
	}

	// The seed's UPDATE, as written there: within 2 seconds the limit is 100.
	exec("UPDATE llm_rate_limit_configs \nSET limit_value = 100 \nWHERE limit_type = 'minute';")
	exec(`INSERT INTO llm_rate_limit_configs (limit_type, limit_value, provider) VALUES ('minute', 2, 'Azure')`)
	start := time.Now()
	var seen string
	if !sidecartest.Eventually(2*time.Second, func() bool {
		// The UPDATE and the INSERT are two notifications, which may be
		// applied by two reloads: wait for both.
		seen = rules("")
		return strings.Contains(rules("?user_id=alice&model=gpt-4o"), `"limit":100`) &&
			strings.Contains(rules("?user_id=bob&model=gpt-4o&provider=azure"), `"limit":2,`)
	}) {
		t.Fatalf("the seed's UPDATE and INSERT did not apply within 2 s; the rules: %s", seen)
	}
	t.Logf("the UPDATE applied after %s", time.Since(start).Round(time.Millisecond))
	code, body := s.Get(t, "/v1/limits?user_id=alice&model=gpt-4o")
	if limits, _ := body["limits"].([]any); code != http.StatusOK || len(limits) != 1 || limits[0].(map[string]any)["limit"] != float64(100) {
		t.Fatalf("/v1/limits after the UPDATE: %d %v", code, body)
	}
	if got := rules(""); !strings.Contains(got, `"shadowed_by":"llm_rate_limit_configs id 1"`) {
		t.Fatalf("/v1/rules does not show the file rule shadowed by the updated row: %s", got)
	}
	if !strings.Contains(s.Log(), `"msg":"limit rule shadowed by a rule of the same scope","rule":"`+file+`:2","by":"llm_rate_limit_configs id 1"`) {
		t.Fatalf("the file rule shadowed by the updated row is not logged:\n%s", s.Log())
	}

	// A row written 'Azure' limits checks sent as azure (and as the
	// normalised name): 2 a minute for bob.
	if got := codes("bob", "azure", 2) + " " + codes("bob", "azure.ai.openai", 1) + " " + codes("bob", " AZURE ", 1); got != "200 200 429 429" {
		t.Fatalf("a provider 'Azure' row of 2/minute: %s, want 200 200 429 429", got)
	}
	if got := codes("bob", "openai", 1); got != "200" {
		t.Fatalf("bob on openai is under the 100/minute row: %s", got)
	}
}

// TestLimitsConfigMapUpdate mounts the limits file as a ConfigMap volume
// does and edits the ConfigMap as kubelet applies an edit (a symlink swap
// that leaves the file's path untouched): the sidecar applies it by
// itself, without SIGHUP; a bad edit keeps the rules in force and shows in
// the reload metrics; the next good edit applies.
func TestLimitsConfigMapUpdate(t *testing.T) {
	v := sidecartest.NewConfigMapVolume(t, "limits.yaml", "limits:\n  - limit_type: minute\n    requests: 3\n")
	s := sidecartest.Start(t, sidecartest.Options{Flags: []string{"--limits-file", v.Path}})
	limit := func() string {
		t.Helper()
		code, body := s.Get(t, "/v1/rules?user_id=alice&model=gpt-4o")
		if code != http.StatusOK {
			t.Fatalf("/v1/rules: %d %v", code, body)
		}
		b, _ := json.Marshal(body["applicable"])
		return string(b)
	}
	if got := limit(); !strings.Contains(got, `"limit":3,`) {
		t.Fatalf("at start: %s, want the file's 3/minute", got)
	}
	started := s.Gauge("llmusage_rules_file_last_reload_success_timestamp_seconds")
	if started <= 0 || s.Gauge("llmusage_rules_file_last_reload_successful") != 1 {
		t.Fatalf("at start: loaded at %v, last reload successful %v", started, s.Gauge("llmusage_rules_file_last_reload_successful"))
	}

	v.Update("limits:\n  - limit_type: minute\n    requests: 5\n")
	sidecartest.WaitFor(t, 10*time.Second, func() bool { return strings.Contains(limit(), `"limit":5,`) }, "the ConfigMap edit did not apply: %s", limit())
	sidecartest.WaitFor(t, 5*time.Second, func() bool {
		return s.Gauge("llmusage_rules_file_last_reload_success_timestamp_seconds") > started
	}, "the reload time did not move")
	for i, want := range []int{200, 200, 200, 200, 200, 429} {
		if code, _, body := s.PostJSON(t, "/v1/check", `{"user_id": "alice", "model": "gpt-4o"}`); code != want {
			t.Fatalf("check %d under 5/minute: %d %v, want %d", i+1, code, body, want)
		}
	}

	v.Update("limits:\n  - limit_type: minute\n    requests: many\n")
	sidecartest.WaitFor(t, 10*time.Second, func() bool {
		return s.Gauge("llmusage_rules_file_reload_failures_total") == 1 && s.Gauge("llmusage_rules_file_last_reload_successful") == 0
	}, "the bad edit is not counted as a failed reload")
	if got := limit(); !strings.Contains(got, `"limit":5,`) {
		t.Fatalf("after a bad edit: %s, want the 5/minute in force", got)
	}
	if !strings.Contains(s.Log(), "limits file not reloaded; the previous rules stay in force") {
		t.Fatalf("the bad edit is not logged:\n%s", s.Log())
	}

	v.Update("limits:\n  - limit_type: minute\n    requests: 8\n")
	sidecartest.WaitFor(t, 10*time.Second, func() bool {
		return strings.Contains(limit(), `"limit":8,`) && s.Gauge("llmusage_rules_file_last_reload_successful") == 1
	}, "the fixed edit did not apply: %s", limit())
	if n := s.Gauge("llmusage_rules_file_reload_failures_total"); n != 1 {
		t.Fatalf("%v failed reloads, want 1", n)
	}
}
