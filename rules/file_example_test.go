package rules

import "testing"

// TestExampleLimitsFile keeps the shipped example loadable.
func TestExampleLimitsFile(t *testing.T) {
	cfg, err := LoadFile("../deploy/kubernetes/limits.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Rules) != 6 || len(cfg.Providers) != 1 {
		t.Fatalf("example file: %d rules and %d prefixes, want 6 and 1", len(cfg.Rules), len(cfg.Providers))
	}
}
