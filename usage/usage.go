// Package usage holds the usage API's query and answer types: what the
// collector asks a store for (/api/llm/usage/*) and what the store answers,
// so that neither has to import the other.
package usage

import (
	"encoding/json"
	"time"

	"github.com/llmusage/llmusage/usd"
)

// Query selects the records a Breakdown sums up.
type Query struct {
	// UserID restricts to one user; empty means every user.
	UserID string
	// TeamID restricts to one team's calls; empty means every call.
	TeamID string
	// Since is the first instant counted.
	Since time.Time
}

// Breakdown is what the usage API reports: the totals of a set of
// records, and the same split by model, provider, team and day.
type Breakdown struct {
	Totals
	// ByModel maps a model to its totals.
	ByModel map[string]ModelTotals `json:"by_model"`
	// ByProvider maps a provider to its totals.
	ByProvider map[string]Totals `json:"by_provider"`
	// ByTeam maps a team_id to its totals; "" holds the calls without one.
	ByTeam map[string]Totals `json:"by_team"`
	// ByDay is oldest first, days without calls omitted.
	ByDay []DayTotals `json:"by_day"`
}

// Totals sums a set of records.
type Totals struct {
	// Calls counts the records.
	Calls int64 `json:"calls"`
	// Errors counts the records of status error.
	Errors int64 `json:"errors"`
	// Tokens sums tokens_used.
	Tokens int64 `json:"tokens"`
	// PromptTokens sums prompt_tokens.
	PromptTokens int64 `json:"prompt_tokens"`
	// CompletionTokens sums completion_tokens.
	CompletionTokens int64 `json:"completion_tokens"`
	// CostUSD sums the cost of the priced records; UnpricedCalls counts
	// the others, whose cost is unknown (not zero), so that a reader can
	// tell a partial sum from a complete one.
	CostUSD       usd.Amount `json:"cost_usd"`
	UnpricedCalls int64      `json:"unpriced_calls"`
}

// ModelTotals are the totals of one model, with its provider.
type ModelTotals struct {
	Totals
	// Provider is the model's provider (the most frequent, should a model
	// have been recorded under several).
	Provider string `json:"provider"`
	// providerCalls counts Provider's calls, to pick the most frequent.
	providerCalls int64
}

// DayTotals are the totals of one UTC day.
type DayTotals struct {
	// Day is YYYY-MM-DD, UTC.
	Day string `json:"day"`
	Totals
}

// SpendQuery selects the records whose costs a budget's spend sums.
type SpendQuery struct {
	// UserID is the user charged; empty sums every user's (a pool's spend).
	UserID string
	// TeamID keeps the records of one team; empty keeps every record,
	// with a team or without.
	TeamID string
	// Provider scopes the sum to one provider (normalised); empty means any.
	Provider string
	// Model is a glob as limit rules match models: "*" any run of
	// characters, "?" one character, ASCII case ignored; empty means any.
	Model string
	// From is the first instant counted, To the first one not counted.
	From, To time.Time
}

// ModelSpend is what was spent on one provider and model for one team.
type ModelSpend struct {
	Provider, Model string
	// TeamID is the records' team_id; empty for none.
	TeamID string
	Spent  usd.Amount
}

// LogQuery selects a page of records.
type LogQuery struct {
	// UserID, TeamID, Model and Provider filter when not empty.
	UserID, TeamID, Model, Provider string
	// Limit is the page size.
	Limit int
	// Before is the NextCursor of the previous page, or empty for the newest.
	Before string
}

// LogPage is one page of records.
type LogPage struct {
	// Logs are the records, newest first.
	Logs []LogEntry `json:"logs"`
	// NextCursor fetches the next (older) page; empty on the last page.
	NextCursor string `json:"next_cursor"`
}

// LogEntry is one stored record, with the seed's field names.
type LogEntry struct {
	// ID is the row's id, as text: an adopted table may key rows by uuid.
	ID string `json:"id"`
	// RequestID is the record's request_id; empty for a legacy row without one.
	RequestID string `json:"request_id"`
	// UserID, Provider and Model identify the call.
	UserID string `json:"user_id"`
	// TeamID is the call's team; "" when it had none.
	TeamID   string `json:"team_id"`
	Provider string `json:"provider"`
	Model    string `json:"model"`
	// TokensUsed to ReasoningTokens are the call's token counts.
	TokensUsed       int64 `json:"tokens_used"`
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	CachedTokens     int64 `json:"cached_tokens"`
	ReasoningTokens  int64 `json:"reasoning_tokens"`
	// CacheWriteTokens is the part of PromptTokens written to a prompt
	// cache (Anthropic's cache_creation_input_tokens); 0 for a row stored
	// before the database kept it.
	CacheWriteTokens int64 `json:"cache_write_tokens"`
	// CostUSD is what the call cost, nil when unknown (an unpriced model,
	// a row from before costs were recorded).
	CostUSD *usd.Amount `json:"cost_usd"`
	// LatencyMs is nil when the record gave none.
	LatencyMs *float64 `json:"latency_ms"`
	// Status is success or error; ErrorType says which error.
	Status    string `json:"status"`
	ErrorType string `json:"error_type,omitempty"`
	// Metadata is the record's metadata object, as stored.
	Metadata json.RawMessage `json:"metadata,omitempty"`
	// CreatedAt is the call's time, UTC.
	CreatedAt time.Time `json:"created_at"`
}

// NewBreakdown returns an empty Breakdown, its maps and days ready for Add
// and written as {} and [] rather than null.
func NewBreakdown() Breakdown {
	return Breakdown{ByModel: map[string]ModelTotals{}, ByProvider: map[string]Totals{}, ByTeam: map[string]Totals{}, ByDay: []DayTotals{}}
}

// Add folds one (model, provider) group into the totals and breakdowns.
func (b *Breakdown) Add(model, provider string, t Totals) {
	b.Totals.add(t)
	m := b.ByModel[model]
	// The provider with the most calls names the model.
	if m.Provider == "" || t.Calls > m.providerCalls {
		m.Provider, m.providerCalls = provider, t.Calls
	}
	m.Totals.add(t)
	b.ByModel[model] = m
	p := b.ByProvider[provider]
	p.add(t)
	b.ByProvider[provider] = p
}

// AddTeam adds t to the totals of team (already counted by Add).
func (b *Breakdown) AddTeam(team string, t Totals) {
	s := b.ByTeam[team]
	s.add(t)
	b.ByTeam[team] = s
}

// AddDay adds t to the totals of day (YYYY-MM-DD). Days must come in
// order, oldest first; a day's parts may come one after another.
func (b *Breakdown) AddDay(day string, t Totals) {
	if n := len(b.ByDay); n > 0 && b.ByDay[n-1].Day == day {
		b.ByDay[n-1].add(t)
		return
	}
	b.ByDay = append(b.ByDay, DayTotals{Day: day, Totals: t})
}

// Plus returns the sum of t and o.
func (t Totals) Plus(o Totals) Totals {
	t.add(o)
	return t
}

func (t *Totals) add(o Totals) {
	t.Calls += o.Calls
	t.Errors += o.Errors
	t.Tokens += o.Tokens
	t.PromptTokens += o.PromptTokens
	t.CompletionTokens += o.CompletionTokens
	t.CostUSD += o.CostUSD
	t.UnpricedCalls += o.UnpricedCalls
}
