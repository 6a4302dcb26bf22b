package rules

import (
	"context"
	"time"
)

// PricesTable holds the operators' model prices, which override the
// embedded price table as the limits file's prices: section does.
const PricesTable = "llm_model_prices"

// PriceRow is a row of llm_model_prices, as a store reads it. Prices are
// in USD per million tokens, as decimal text (the column is numeric and
// must not pass through a float).
type PriceRow struct {
	// ID is the row's id, as text.
	ID string
	// Provider scopes the price; empty matches every provider.
	Provider string
	// Model is the model name or glob ("*" any run, "?" one character,
	// ASCII case ignored), as limit rules match models.
	Model string
	// Input and Output are required. CachedInput (cache reads) and
	// CacheWrite are nil when the row leaves them out: they then cost
	// what Input costs.
	Input, Output           string
	CachedInput, CacheWrite *string
	// EffectiveFrom, when set, is the first record timestamp the price
	// applies to; records before it keep the earlier price.
	EffectiveFrom *time.Time
}

// PriceSource is a database's llm_model_prices table; both stores
// implement it. Its changes are watched with the rule tables'
// (Source.WatchRules).
type PriceSource interface {
	// PriceRows reads the rows of llm_model_prices in id order.
	PriceRows(ctx context.Context) ([]PriceRow, error)
}
