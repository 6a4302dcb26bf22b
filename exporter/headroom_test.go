package exporter

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestHeadroomRefusals: a provider's series exists at 0 before its first
// refusal, so that rate() sees that one.
func TestHeadroomRefusals(t *testing.T) {
	e := New(Options{})
	e.ObserveHeadroomRefusals("openai", 0)
	e.ObserveHeadroomRefusals("anthropic", 0)
	e.ObserveHeadroomRefusals("openai", 1)
	e.ObserveHeadroomRefusals("openai", 1)
	want := `# HELP llmusage_proxy_headroom_refusals_total Proxied calls answered with the sidecar's own 429 under --provider-headroom=respect, because the provider's latest answer for the same key and model said it had nothing left (or a Retry-After still running): upstream calls not made, by provider.
# TYPE llmusage_proxy_headroom_refusals_total counter
llmusage_proxy_headroom_refusals_total{provider="anthropic"} 0
llmusage_proxy_headroom_refusals_total{provider="openai"} 2
`
	if err := testutil.GatherAndCompare(e.Registry(), strings.NewReader(want), "llmusage_proxy_headroom_refusals_total"); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.GatherAndLint(e.Registry(), "llmusage_proxy_headroom_refusals_total"); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
}
