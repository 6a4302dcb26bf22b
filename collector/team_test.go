package collector

import (
	"net/http"
	"strings"
	"testing"

	"github.com/llmusage/llmusage/record"
)

// TestTeamID: team_id is optional on records and checks, kept on the
// record (and on what the limiter is charged), and refused as user_id is
// when invalid, naming team_id; Submit (OTLP) applies the same rule.
func TestTeamID(t *testing.T) {
	s := newTestServer(t, "")
	rec, out := s.do(t, http.MethodPost, "/v1/calls", "application/x-ndjson",
		`{"user_id":"u","team_id":"red","model":"gpt-4o","prompt_tokens":1}
{"user_id":"u","model":"gpt-4o","prompt_tokens":1}
`)
	if rec.Code != http.StatusAccepted {
		t.Fatalf("records with and without a team: %d %v", rec.Code, out)
	}
	if got := s.observer.records; len(got) != 2 || got[0].TeamID != "red" || got[1].TeamID != "" {
		t.Fatalf("records %+v", got)
	}
	if u := usageOfRecord(&s.observer.records[0]); u.TeamID != "red" {
		t.Fatalf("the limiter's usage of a team's record: %+v", u)
	}
	for _, body := range []string{
		`{"user_id":"u","team_id":"a\u0001b","model":"m"}`,
		`{"user_id":"u","team_id":"a\u0000b","model":"m"}`,
		`{"user_id":"u","team_id":7,"model":"m"}`,
		`{"user_id":"u","team_id":"` + strings.Repeat("t", MaxIDLength+1) + `","model":"m"}`,
	} {
		for _, path := range []string{"/v1/calls", "/v1/check"} {
			rec, out := s.do(t, http.MethodPost, path, "application/json", body)
			if rec.Code != http.StatusBadRequest || out["details"].([]any)[0].(map[string]any)["field"] != "team_id" {
				t.Fatalf("%s %s: %d %s, want 400 naming team_id", path, body, rec.Code, rec.Body)
			}
		}
	}
	if rec, out := s.do(t, http.MethodPost, "/v1/check", "application/json", `{"user_id":"u","team_id":"red","model":"m"}`); rec.Code != http.StatusOK {
		t.Fatalf("a check with a team: %d %v", rec.Code, out)
	}
	c := New(Options{Limiter: s.limiter})
	_, details, _ := c.Submit([]record.Record{{UserID: "u", TeamID: "bad\nteam", Model: "m"}})
	if len(details) != 1 || details[0].Field != "team_id" {
		t.Fatalf("Submit of an invalid team: %+v", details)
	}
}
