package main

import (
	"strings"
	"testing"

	"github.com/llmusage/llmusage/internal/sidecartest"
)

// TestStartLogListsRoutesAndRules: before "llmusage serving", the log
// has one line per proxy route (an --upstream one with its password
// hidden) and one per rule in force, with its source line.
func TestStartLogListsRoutesAndRules(t *testing.T) {
	s := sidecartest.Start(t, sidecartest.Options{
		Limits: "limits:\n  - limit_type: minute\n    requests: 30\n  - user_id: intern\n    limit_type: day\n    usd: 1.5\n  - provider: groq\n    per: all\n    concurrent: 4\n",
		Flags:  []string{"--upstream", "local=http://user:secret@127.0.0.1:1/v1"},
	})
	log := s.Log()
	// The harness logs in JSON.
	serving := strings.Index(log, `"msg":"llmusage serving"`)
	if serving < 0 {
		t.Fatalf("no serving line in:\n%s", log)
	}
	for _, want := range []string{
		`"msg":"proxy route","route":"/openai/","upstream":"https://api.openai.com","provider":"openai","key":"the client's"`,
		`"msg":"proxy route","route":"/local/","upstream":"http://user:xxxxx@127.0.0.1:1/v1","provider":"local"`,
		`"msg":"rule in force","scope":"every user","limit":"30 requests per minute","source":"` + s.LimitsFile + `:2"`,
		`"msg":"rule in force","scope":"user_id=intern","limit":"$1.5 per day","source":"` + s.LimitsFile + `:4"`,
		`"msg":"rule in force","scope":"provider=groq per=all","limit":"4 concurrent","source":"` + s.LimitsFile + `:7"`,
	} {
		if i := strings.Index(log, want); i < 0 || i > serving {
			t.Errorf("no %s before the serving line in:\n%s", want, log)
		}
	}
	if strings.Contains(log, "secret") {
		t.Errorf("the log shows an upstream's password:\n%s", log)
	}
}
