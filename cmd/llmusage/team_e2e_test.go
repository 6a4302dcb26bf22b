package main

import (
	"context"
	"database/sql"
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

// TestTeamsEndToEnd posts records and checks with a team_id to the real
// binary, on each store: the team shows in /metrics (team label, the
// team gauge), in /api/llm/usage/stats (?team_id= and by_team), in the
// logs and in the daily summary; an invalid team_id is refused naming it.
func TestTeamsEndToEnd(t *testing.T) {
	for _, kind := range []string{"sqlite", "postgres"} {
		t.Run(kind, func(t *testing.T) {
			opts := sidecartest.Options{Limits: "limits: []\n", Flags: []string{"--flush-interval", "50ms"}}
			if kind == "postgres" {
				opts.DatabaseURL = pgtest.URL(t)
			}
			s := sidecartest.Start(t, opts)
			records := `{"user_id":"alice","team_id":"red","model":"gpt-4o","prompt_tokens":100,"completion_tokens":10}
{"user_id":"bob","team_id":"blue","model":"gpt-4o","prompt_tokens":200,"completion_tokens":20}
{"user_id":"alice","team_id":"red","model":"gpt-4o-mini","prompt_tokens":300,"completion_tokens":30}
{"user_id":"carol","model":"gpt-4o","prompt_tokens":400,"completion_tokens":40}
`
			if code, _, body := s.Post(t, "/v1/calls", "application/x-ndjson", records); code != http.StatusAccepted {
				t.Fatalf("records: %d %v", code, body)
			}
			code, _, body := s.PostJSON(t, "/v1/calls", `{"user_id":"alice","team_id":"bad\nteam","model":"gpt-4o"}`)
			if code != http.StatusBadRequest || !strings.Contains(body["error"].(string)+anyString(body["details"]), "team_id") {
				t.Fatalf("a record with an invalid team_id: %d %v", code, body)
			}
			if code, _, body := s.PostJSON(t, "/v1/check", `{"user_id":"alice","team_id":"red","model":"gpt-4o","tokens":10}`); code != http.StatusOK {
				t.Fatalf("a check with a team_id: %d %v", code, body)
			}
			code, _, body = s.PostJSON(t, "/v1/check", `{"user_id":"alice","team_id":7,"model":"gpt-4o"}`)
			if code != http.StatusBadRequest || !strings.Contains(anyString(body["details"]), "team_id") {
				t.Fatalf("a check with a team_id not a string: %d %v", code, body)
			}

			metrics := s.Scrape(t)
			for series, want := range map[string]float64{
				`llm_requests_total{model="gpt-4o",provider="openai",status="success",team="red",user="alice"}`:       1,
				`llm_requests_total{model="gpt-4o",provider="openai",status="success",team="blue",user="bob"}`:        1,
				`llm_requests_total{model="gpt-4o",provider="openai",status="success",team="",user="carol"}`:          1,
				`llm_tokens_total{model="gpt-4o-mini",provider="openai",team="red",token_type="prompt",user="alice"}`: 300,
				`llmusage_metrics_teams`: 2,
			} {
				if got := sidecartest.Value(metrics, series); got != want {
					t.Errorf("%s = %v, want %v", series, got, want)
				}
			}

			var stats map[string]any
			sidecartest.WaitFor(t, 10*time.Second, func() bool {
				_, stats = s.Get(t, "/api/llm/usage/stats")
				return stats["total_calls"] == float64(4)
			}, "the records were not stored")
			byTeam := stats["by_team"].(map[string]any)
			if len(byTeam) != 3 || byTeam["red"].(map[string]any)["calls"] != float64(2) || byTeam[""].(map[string]any)["calls"] != float64(1) {
				t.Fatalf("by_team: %v", byTeam)
			}
			_, stats = s.Get(t, "/api/llm/usage/stats?team_id=red")
			if stats["total_calls"] != float64(2) || stats["team_id"] != "red" || stats["prompt_tokens"] != float64(400) {
				t.Fatalf("stats of team red: %v", stats)
			}
			if code, body := s.Get(t, "/api/llm/usage/stats?team_id=bad%0Ateam"); code != http.StatusBadRequest {
				t.Fatalf("stats with an invalid team_id: %d %v", code, body)
			}
			_, logs := s.Get(t, "/api/llm/usage/logs?team_id=blue")
			entries := logs["logs"].([]any)
			if len(entries) != 1 || entries[0].(map[string]any)["team_id"] != "blue" || entries[0].(map[string]any)["user_id"] != "bob" {
				t.Fatalf("logs of team blue: %v", logs)
			}

			// The daily summary, keyed by team.
			var summary string
			if kind == "postgres" {
				conn, err := pgx.Connect(context.Background(), opts.DatabaseURL)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(context.Background())
				if _, err := conn.Exec(context.Background(), `SELECT refresh_llm_usage_summary()`); err != nil {
					t.Fatal(err)
				}
				err = conn.QueryRow(context.Background(), `SELECT string_agg(team_id || ':' || calls, ' ' ORDER BY team_id)
					FROM (SELECT team_id, sum(calls) AS calls FROM llm_usage_daily_summary GROUP BY team_id) x`).Scan(&summary)
				if err != nil {
					t.Fatal(err)
				}
			} else {
				db, err := sql.Open("sqlite", filepath.Join(s.DataDir, "llmusage.db"))
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				err = db.QueryRow(`SELECT group_concat(x, ' ') FROM (SELECT team_id || ':' || sum(calls) AS x
					FROM llm_usage_daily_summary GROUP BY team_id ORDER BY team_id)`).Scan(&summary)
				if err != nil {
					t.Fatal(err)
				}
			}
			if summary != ":1 blue:1 red:2" {
				t.Fatalf("daily summary by team: %q", summary)
			}
		})
	}
}

// anyString renders a decoded JSON value, for a search in it.
func anyString(v any) string {
	var b strings.Builder
	switch v := v.(type) {
	case []any:
		for _, e := range v {
			b.WriteString(anyString(e))
		}
	case map[string]any:
		for k, e := range v {
			b.WriteString(k + "=" + anyString(e) + " ")
		}
	case string:
		b.WriteString(v)
	}
	return b.String()
}
