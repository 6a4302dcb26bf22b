package collector

import (
	"net/http"
	"strings"
	"testing"
)

// TestUnknownFieldSuggestion: a misspelt field is answered with the
// field it is closest to.
func TestUnknownFieldSuggestion(t *testing.T) {
	s := newTestServer(t, "")
	_, out := s.do(t, http.MethodPost, "/v1/calls", "application/json", `{"user_id":"u","model":"m","prompt_token":3}`)
	msg := out["details"].([]any)[0].(map[string]any)["message"].(string)
	if !strings.Contains(msg, `did you mean "prompt_tokens"`) {
		t.Fatalf("message %q does not suggest prompt_tokens", msg)
	}
}
