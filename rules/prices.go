package rules

import (
	"fmt"
	"strings"
	"time"

	"github.com/llmusage/llmusage/pricing"
	"github.com/llmusage/llmusage/provider"
	"github.com/llmusage/llmusage/usd"
)

// filePrice is one entry of the limits file's prices list: USD per
// million tokens.
type filePrice struct {
	Provider    string   `yaml:"provider"`
	Model       string   `yaml:"model"`
	Input       *decimal `yaml:"input"`
	Output      *decimal `yaml:"output"`
	CachedInput *decimal `yaml:"cached_input"`
	CacheWrite  *decimal `yaml:"cache_write"`
	From        string   `yaml:"from"`
	Description string   `yaml:"description"`
}

// override validates a prices entry found at at.
func (fp filePrice) override(at string) (pricing.Override, error) {
	o := pricing.Override{Provider: provider.Normalize(fp.Provider), Model: strings.TrimSpace(fp.Model), Source: at}
	if o.Model == "" {
		return o, fmt.Errorf("cannot use %s: model is required (a name or a glob such as gpt-4o*)", at)
	}
	if fp.Input == nil || fp.Output == nil {
		return o, fmt.Errorf("cannot use %s: input and output are required (USD per million tokens; 0 for a free model)", at)
	}
	var err error
	amount := func(name string, d *decimal) usd.Amount {
		if d == nil || err != nil {
			return 0
		}
		var a usd.Amount
		if a, err = usd.Parse(string(*d)); err != nil {
			err = fmt.Errorf("cannot use %s: %s must be USD per million tokens such as 2.5, got %q", at, name, *d)
		}
		return a
	}
	o.Input, o.Output = amount("input", fp.Input), amount("output", fp.Output)
	o.CacheRead, o.HasCacheRead = amount("cached_input", fp.CachedInput), fp.CachedInput != nil
	o.CacheWrite, o.HasCacheWrite = amount("cache_write", fp.CacheWrite), fp.CacheWrite != nil
	if err != nil {
		return o, err
	}
	if fp.From != "" {
		if o.From, err = parseFrom(fp.From); err != nil {
			return o, fmt.Errorf("cannot use %s: from: %w", at, err)
		}
	}
	if err := o.Validate(); err != nil {
		return o, fmt.Errorf("cannot use %s: %w", at, err)
	}
	return o, nil
}

// parseFrom reads an RFC 3339 time or a date (midnight UTC).
func parseFrom(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("want a date (2026-01-01) or an RFC 3339 time, got %q", s)
	}
	return t, nil
}

// Override validates the row as a price override.
func (r PriceRow) Override() (pricing.Override, error) {
	at := fmt.Sprintf("%s id %s", PricesTable, r.ID)
	fp := filePrice{Provider: r.Provider, Model: r.Model, Input: (*decimal)(&r.Input), Output: (*decimal)(&r.Output),
		CachedInput: (*decimal)(r.CachedInput), CacheWrite: (*decimal)(r.CacheWrite)}
	o, err := fp.override(at)
	if err != nil {
		return o, err
	}
	if r.EffectiveFrom != nil {
		o.From = *r.EffectiveFrom
	}
	return o, nil
}

// Prices is the price table in force: base (the embedded prices) under
// the limits file's overrides, under the database's rows. An operator's
// row wins over the file, as for limits; within each, the first entry
// that matches a call prices it. Rows that are not valid prices are
// returned and left out.
func Prices(base *pricing.Table, file *File, rows []PriceRow) (*pricing.Table, []error) {
	var overrides []pricing.Override
	var skipped []error
	for _, r := range rows {
		o, err := r.Override()
		if err != nil {
			skipped = append(skipped, err)
			continue
		}
		overrides = append(overrides, o)
	}
	if file != nil {
		overrides = append(overrides, file.Prices...)
	}
	t, err := base.With(overrides)
	if err != nil { // validated above: not reached
		return base, append(skipped, err)
	}
	return t, skipped
}
