// Package pricing prices a call in USD from its provider, model, time and
// token usage.
//
// The prices are a snapshot of pydantic/genai-prices (MIT licence, see
// data/LICENSE-genai-prices), taken from the npm package
// @pydantic/genai-prices pinned in refresh/package-lock.json, trimmed by
// refresh/dump.mjs to the providers llmusage knows and the price keys it
// reads, and embedded from data/genai-prices.json. Refresh it with
//
//	scripts/refresh-prices.sh
//
// which runs npm ci in pricing/refresh and then the dump script; to move to
// a new version, change the pin in refresh/package.json, run npm install
// there, then the script, then go test ./pricing/.
//
// Lookups follow the source's JavaScript package (dist/index.js of the
// pinned version): the model name is lower-cased and trimmed; a
// provider's models are tried in order and the first whose match rule
// matches wins (equals, starts_with, ends_with and contains ignore case;
// regex runs case-sensitively on the lower-cased name); then the models of
// the provider's fallback_model_providers (one level); then all of it
// again with a compact date suffix such as -20240229 rewritten to
// -2024-02-29. Historic prices are chosen by the record's time: the last
// listed conditional price whose constraint holds (start_date at or after
// UTC midnight of that day; time_of_date windows in UTC), else the first.
// Long-context tiers apply to the whole call when its input tokens exceed
// the tier's start. A model whose chosen price has none of the keys below
// (whisper, OCR) is unpriced, not free.
//
// Price keys other than input_mtok, cache_read_mtok, cache_write_mtok,
// output_mtok and requests_kcount (audio, image, web searches, 1-hour
// cache writes, ...) are not read: the record carries no usage for them,
// and without that usage the source prices them at zero too.
//
// Overrides (Table.With) come before the embedded data; see docs/cost.md.
package pricing

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strings"
	"sync"
	"time"

	"github.com/llmusage/llmusage/internal/glob"
	"github.com/llmusage/llmusage/provider"
	"github.com/llmusage/llmusage/usd"
)

// Usage is what a call used, in the shape the record carries.
type Usage struct {
	InputTokens      int64 // all prompt tokens, cache reads and writes included
	CacheReadTokens  int64 // part of InputTokens read from a prompt cache
	CacheWriteTokens int64 // part of InputTokens written to a prompt cache
	OutputTokens     int64 // all output, reasoning included (billed as output)
}

// Price is what a model costs. Token prices are per million tokens.
type Price struct {
	// Input is the price of uncached input tokens.
	Input usd.Amount
	// CacheRead is the price of cache-read tokens, if HasCacheRead.
	CacheRead usd.Amount
	// CacheWrite is the price of cache-write tokens, if HasCacheWrite.
	CacheWrite usd.Amount
	// Output is the price of output tokens, reasoning included.
	Output usd.Amount
	// HasCacheRead tells whether CacheRead is set; if not, cache reads
	// cost Input.
	HasCacheRead bool
	// HasCacheWrite tells whether CacheWrite is set; if not, cache writes
	// cost Input.
	HasCacheWrite bool
	// PerThousandCalls is a fee per thousand calls (genai-prices'
	// requests_kcount), charged a thousandth of it per call.
	PerThousandCalls usd.Amount
	// Tiers are long-context prices, by ascending Above: the last tier
	// whose Above the call's InputTokens exceed prices the whole call.
	// Shared between copies of a Price: do not modify.
	Tiers []Tier
}

// Tier is a long-context price: it replaces a Price's token prices for a
// call whose InputTokens exceed Above.
type Tier struct {
	// Above is the threshold: the tier applies to calls with more input
	// tokens than this (genai-prices' tier start).
	Above int64
	// Input is the price of uncached input tokens in this tier.
	Input usd.Amount
	// CacheRead is the price of cache-read tokens, if the Price HasCacheRead.
	CacheRead usd.Amount
	// CacheWrite is the price of cache-write tokens, if the Price HasCacheWrite.
	CacheWrite usd.Amount
	// Output is the price of output tokens in this tier.
	Output usd.Amount
}

// Cost computes tokens x price / 1e6 exactly (128-bit intermediate),
// rounded half up to the nano-dollar, once for the whole call.
// Uncached input = InputTokens - CacheReadTokens - CacheWriteTokens (never
// negative); a missing cache_read price means the input price; a missing
// cache_write price means the input price. Negative counts count as zero;
// a sum beyond an int64 saturates.
func (p Price) Cost(u Usage) usd.Amount {
	in, cr, cw, out := p.Input, p.CacheRead, p.CacheWrite, p.Output
	for i := range p.Tiers {
		t := &p.Tiers[i]
		if u.InputTokens <= t.Above {
			break
		}
		in, cr, cw, out = t.Input, t.CacheRead, t.CacheWrite, t.Output
	}
	if !p.HasCacheRead {
		cr = in
	}
	if !p.HasCacheWrite {
		cw = in
	}
	reads, writes := nonNegative(u.CacheReadTokens), nonNegative(u.CacheWriteTokens)
	uncached := nonNegative(u.InputTokens) - reads - writes
	if uncached < 0 {
		uncached = 0
	}
	var s sum128
	s.add(uint64(uncached), uint64(nonNegative(int64(in))))
	s.add(uint64(reads), uint64(nonNegative(int64(cr))))
	s.add(uint64(writes), uint64(nonNegative(int64(cw))))
	s.add(uint64(nonNegative(u.OutputTokens)), uint64(nonNegative(int64(out))))
	// A thousandth of the fee per call is fee*1e6/1000 in the numerator.
	s.add(1000, uint64(nonNegative(int64(p.PerThousandCalls))))
	return s.perMillion()
}

// Match is a price found for a call.
type Match struct {
	// Price is the price in effect for the call.
	Price Price
	// Provider is the genai-prices provider whose table priced the call
	// ("openai" for an azure.ai.openai call priced by its fallback), or
	// the override's Provider (empty for any).
	Provider string
	// ModelID is the genai-prices model id, or the override's Model.
	ModelID string
	// Source names where the price came from: Snapshot().Source or the
	// override's Source.
	Source string
}

// Snapshot describes the embedded data.
type Snapshot struct {
	// Source is the name, version and date, e.g. "genai-prices 0.1.8 (2026-09-23)".
	Source string
	// Version is the version of the npm package @pydantic/genai-prices.
	Version string
	// Date is the publish date of that version, YYYY-MM-DD.
	Date string
}

// ModelInfo is a model of the table, for an API listing.
type ModelInfo struct {
	// Provider is the llmusage provider name, or an override's Provider
	// (empty for any).
	Provider string
	// ModelID is the genai-prices model id, or an override's Model glob.
	ModelID string
	// Name is the model's display name, if the source gives one.
	Name string
	// Price is the price in effect at the snapshot date, outside any
	// time-of-day window.
	Price Price
	// Deprecated tells whether the source marks the model deprecated.
	Deprecated bool
	// ContextWindow is the context window in tokens, 0 if unknown.
	ContextWindow int64
	// Source names where the price came from.
	Source string
}

// Override is a price that takes precedence over the embedded data.
type Override struct {
	Provider string // llmusage provider name; empty = any
	// Model is a glob: "*" any run (incl "/"), "?" one char, ASCII case
	// ignored, as in limit rules; empty = any.
	Model string
	// Input is the price per million uncached input tokens.
	Input usd.Amount
	// CacheRead is the price per million cache-read tokens, if HasCacheRead.
	CacheRead usd.Amount
	// CacheWrite is the price per million cache-write tokens, if HasCacheWrite.
	CacheWrite usd.Amount
	// Output is the price per million output tokens.
	Output usd.Amount
	// HasCacheRead, HasCacheWrite: false = same as Input.
	HasCacheRead, HasCacheWrite bool
	From                        time.Time // zero = always; else only records at or after From
	Source                      string    // e.g. "limits.yaml:12" or "llm_model_prices id 3"
}

// Validate checks an override's prices.
func (o Override) Validate() error {
	for _, a := range []struct {
		name string
		v    usd.Amount
	}{{"input", o.Input}, {"cache read", o.CacheRead}, {"cache write", o.CacheWrite}, {"output", o.Output}} {
		if a.v < 0 || a.v > usd.Max {
			return fmt.Errorf("cannot use %s price %s: must be between 0 and %s", a.name, a.v, usd.Max)
		}
	}
	if !o.HasCacheRead && o.CacheRead != 0 {
		return errors.New("cannot use a cache read price without HasCacheRead")
	}
	if !o.HasCacheWrite && o.CacheWrite != 0 {
		return errors.New("cannot use a cache write price without HasCacheWrite")
	}
	return nil
}

// Table is a price table: overrides, then the embedded snapshot.
// It is immutable and safe for concurrent use.
type Table struct {
	// data is the parsed snapshot, shared by every table made from it.
	data *snapshotData
	// overrides are tried first, in order.
	overrides []override
}

// Embedded returns the table of the embedded snapshot. It is parsed once.
func Embedded() (*Table, error) { return embedded() }

// Lookup finds the price of a call to model at provider (an llmusage
// provider name; it is normalised) at time at: the first override that
// matches, else the embedded data. A provider without a table, such as
// "unknown", has no embedded prices.
func (t *Table) Lookup(providerName, model string, at time.Time) (Match, bool) {
	p := providerName
	if _, known := t.data.byName[p]; !known {
		// Intake hands names normalised already: normalise the others only.
		p = provider.Normalize(providerName)
	}
	model = strings.TrimSpace(model)
	for i := range t.overrides {
		o := &t.overrides[i]
		if o.matches(p, model, at) {
			return Match{Price: o.price, Provider: o.Provider, ModelID: o.Model, Source: o.Source}, true
		}
	}
	prov := t.data.byName[p]
	if prov == nil {
		return Match{}, false
	}
	m, owner := prov.find(model)
	if m == nil {
		return Match{}, false
	}
	c := m.priceAt(at, false)
	if c.empty {
		return Match{}, false
	}
	return Match{Price: c.price, Provider: owner.id, ModelID: m.id, Source: t.data.snapshot.Source}, true
}

// Cost prices a call; false if the table has no price for it.
func (t *Table) Cost(providerName, model string, at time.Time, u Usage) (usd.Amount, bool) {
	m, ok := t.Lookup(providerName, model, at)
	if !ok {
		return 0, false
	}
	return m.Price.Cost(u), true
}

// With returns a new table that tries overrides first, in order (the first
// match wins), then t's own overrides, then the embedded data.
func (t *Table) With(overrides []Override) (*Table, error) {
	n := &Table{data: t.data}
	for i, o := range overrides {
		if err := o.Validate(); err != nil {
			return nil, fmt.Errorf("cannot use price override %d (%s): %w", i+1, o.Source, err)
		}
		if o.Provider != "" {
			o.Provider = provider.Normalize(o.Provider)
		}
		o.Model = strings.TrimSpace(o.Model)
		if o.Source == "" {
			o.Source = fmt.Sprintf("price override %d", i+1)
		}
		n.overrides = append(n.overrides, override{Override: o, price: Price{
			Input: o.Input, CacheRead: o.CacheRead, CacheWrite: o.CacheWrite, Output: o.Output,
			HasCacheRead: o.HasCacheRead, HasCacheWrite: o.HasCacheWrite,
		}})
	}
	n.overrides = append(n.overrides, t.overrides...)
	return n, nil
}

// Snapshot describes the embedded data.
func (t *Table) Snapshot() Snapshot { return t.data.snapshot }

// Models lists the overrides, then every model of every llmusage provider
// with an embedded table, by provider name (a genai-prices provider
// serving two llmusage names is listed under both). Models priced only
// through a fallback provider are not repeated. The Tiers slices are
// shared: do not modify them. The listing is built on each call, not
// kept: every table (one per rules reload) would hold a copy of it, and
// only the models API asks for it.
func (t *Table) Models() []ModelInfo {
	models := make([]ModelInfo, 0, len(t.overrides))
	for _, o := range t.overrides {
		models = append(models, ModelInfo{Provider: o.Provider, ModelID: o.Model, Price: o.price, Source: o.Source})
	}
	return append(models, t.data.listing()...)
}

// embedded parses the embedded snapshot once.
var embedded = sync.OnceValues(func() (*Table, error) {
	d, err := parseSnapshot(embeddedJSON)
	if err != nil {
		return nil, err
	}
	return &Table{data: d}, nil
})

// override is a validated Override with its Price.
type override struct {
	// Override is the override, its Provider normalised.
	Override
	// price is the override as a Price.
	price Price
}

func (o *override) matches(provider, model string, at time.Time) bool {
	if o.Provider != "" && o.Provider != provider {
		return false
	}
	if !o.From.IsZero() && at.Before(o.From) {
		return false
	}
	return o.Model == "" || glob.Match(o.Model, model)
}

// sum128 is an unsigned 128-bit sum of products.
type sum128 struct {
	// hi and lo are the high and low 64 bits.
	hi, lo uint64
	// over tells whether the sum overflowed 128 bits.
	over bool
}

func (s *sum128) add(a, b uint64) {
	hi, lo := bits.Mul64(a, b)
	var c uint64
	s.lo, c = bits.Add64(s.lo, lo, 0)
	s.hi, c = bits.Add64(s.hi, hi, c)
	s.over = s.over || c != 0
}

// perMillion divides the sum by 1e6, rounding half up, saturating at the
// largest Amount.
func (s sum128) perMillion() usd.Amount {
	const million = 1_000_000
	if s.over || s.hi >= million {
		return usd.Amount(math.MaxInt64)
	}
	lo, c := bits.Add64(s.lo, million/2, 0)
	hi := s.hi + c
	if hi >= million {
		return usd.Amount(math.MaxInt64)
	}
	q, _ := bits.Div64(hi, lo, million)
	if q > math.MaxInt64 {
		return usd.Amount(math.MaxInt64)
	}
	return usd.Amount(q)
}

func nonNegative(n int64) int64 { return max(n, 0) }
