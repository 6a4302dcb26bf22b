package suggest

import "testing"

func TestNearest(t *testing.T) {
	known := []string{"requests", "tokens", "usd", "limit_type", "prompt_tokens"}
	for _, tc := range []struct {
		name string
		want string
	}{
		{"request", "requests"},
		{"prompt_token", "prompt_tokens"},
		{"limit-type", "limit_type"},
		{"tokens", "tokens"},
		{"colour", ""},
		{"", ""},
		{string(make([]byte, 100)), ""},
	} {
		if got := Nearest(tc.name, known); got != tc.want {
			t.Errorf("Nearest(%q) = %q, want %q", tc.name, got, tc.want)
		}
	}
}
