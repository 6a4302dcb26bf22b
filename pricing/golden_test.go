package pricing

import (
	"encoding/json"
	"math"
	"os"
	"testing"
	"time"
)

// TestAgainstSource checks lookups and costs against the answers of the
// source's own calcPrice, which refresh/golden.mjs recorded for probe
// names of every model: the model id, its first equals name, and the id
// upper-cased with a compact date appended.
func TestAgainstSource(t *testing.T) {
	b, err := os.ReadFile("testdata/golden.json")
	if err != nil {
		t.Fatalf("cannot read the golden cases: %s", err)
	}
	var g struct {
		Times  []time.Time         `json:"times"`
		Usages [][4]int64          `json:"usages"`
		Cases  [][]json.RawMessage `json:"cases"`
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatalf("cannot parse the golden cases: %s", err)
	}
	d := loadEmbedded(t).data
	priced, unpriced := 0, 0
	for _, c := range g.Cases {
		var id, name string
		if json.Unmarshal(c[0], &id) != nil || json.Unmarshal(c[1], &name) != nil {
			t.Fatalf("cannot parse golden case %s", c)
		}
		p := d.byID[id]
		if p == nil {
			t.Fatalf("no genai-prices provider %s", id)
		}
		m, _ := p.find(name)
		if len(c) == 3 {
			unpriced++
			if m != nil {
				t.Fatalf("%s %q: the source prices nothing; got model %s", id, name, m.id)
			}
			continue
		}
		priced++
		var ti, ui int
		var want float64
		if json.Unmarshal(c[2], &ti) != nil || json.Unmarshal(c[3], &ui) != nil || json.Unmarshal(c[4], &want) != nil {
			t.Fatalf("cannot parse golden case %s", c)
		}
		if m == nil {
			t.Fatalf("%s %q: the source prices it at %v; got no model", id, name, want)
		}
		cp := m.priceAt(g.Times[ti], false)
		if cp.empty {
			if want != 0 {
				t.Fatalf("%s %q: the source prices it at %v; got an empty price", id, name, want)
			}
			continue
		}
		u := g.Usages[ui]
		got := cp.price.Cost(Usage{InputTokens: u[0], CacheReadTokens: u[1], CacheWriteTokens: u[2], OutputTokens: u[3]}).Float()
		if math.Abs(got-want) > 1e-9+1e-12*want {
			t.Fatalf("%s %q at %s, usage %v: got %v (model %s); the source says %v", id, name, g.Times[ti], u, got, m.id, want)
		}
	}
	if priced < 1000 || unpriced < 100 {
		t.Fatalf("too few golden cases: %d priced, %d unpriced", priced, unpriced)
	}
}
