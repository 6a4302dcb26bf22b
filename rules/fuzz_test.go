package rules

import (
	"strings"
	"testing"

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/provider"
)

// FuzzParseFile: a limits file either fails with an error or yields
// rules that the limiter accepts. Seeds: testdata/fuzz/FuzzParseFile.
func FuzzParseFile(f *testing.F) {
	f.Add([]byte("limits:\n  - limit_type: minute\n    requests: 30\n"))
	f.Add([]byte("providers:\n  - prefix: llama-\n    provider: groq\nlimits:\n  - user_id: vip\n    model: gpt-4*\n    limit_type: day\n    tokens: 100000\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseFile("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "cannot ") {
				t.Fatalf("error %q does not start with cannot", err)
			}
			return
		}
		if _, err := limiter.New(cfg.Rules, limiter.Options{}); err != nil {
			t.Fatalf("accepted rules the limiter refuses: %s", err)
		}
		provider.NewTable(cfg.Providers).Infer("gpt-4")
	})
}
