package collector

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/pricing"
	"github.com/llmusage/llmusage/record"
	"github.com/llmusage/llmusage/usd"
)

// usageOf is what a record used, as prices count it: cache reads and
// writes are part of prompt_tokens, reasoning part of completion_tokens
// (billed as output).
func usageOf(r *record.Record) pricing.Usage {
	return pricing.Usage{InputTokens: r.PromptTokens, CacheReadTokens: r.CachedTokens, CacheWriteTokens: r.CacheWriteTokens, OutputTokens: r.CompletionTokens}
}

// checkCost estimates what a checked call will cost, never too little for
// what the estimate allows: prompt_tokens as input (at the dearer of the
// input and cache-write prices: a prompt may be written to a cache) and
// max_tokens as output when the check splits its estimate; else its
// tokens split between input and output as dearly as can be, which,
// with long-context tiers priced by the input, means all input, all
// output, or just enough input to reach a tier. ok is false when the
// model has no price.
func checkCost(prices *pricing.Table, req *checkRequest, at time.Time) (cost usd.Amount, ok bool) {
	m, ok := prices.Lookup(req.Provider, req.Model, at)
	if !ok {
		return 0, false
	}
	p := m.Price
	if req.PromptTokens > 0 || req.MaxTokens > 0 {
		out := req.Tokens - req.PromptTokens // tokens beyond the split count as output
		plain := p.Cost(pricing.Usage{InputTokens: req.PromptTokens, OutputTokens: out})
		written := p.Cost(pricing.Usage{InputTokens: req.PromptTokens, CacheWriteTokens: req.PromptTokens, OutputTokens: out})
		return max(plain, written), true
	}
	cost = max(p.Cost(pricing.Usage{InputTokens: req.Tokens}), p.Cost(pricing.Usage{InputTokens: req.Tokens, CacheWriteTokens: req.Tokens}),
		p.Cost(pricing.Usage{OutputTokens: req.Tokens}))
	for _, t := range p.Tiers {
		if in := t.Above + 1; in < req.Tokens {
			cost = max(cost, p.Cost(pricing.Usage{InputTokens: in, OutputTokens: req.Tokens - in}),
				p.Cost(pricing.Usage{InputTokens: in, CacheWriteTokens: in, OutputTokens: req.Tokens - in}))
		}
	}
	return cost, true
}

// unpricedModels remembers the models seen without a price, for
// GET /v1/prices?unpriced=1 and one warning per name: model names are
// free-form, so they are not a metric label.
type unpricedModels struct {
	mu     sync.Mutex
	models map[unpricedKey]*unpricedModel
	// dropped counts names not remembered past maxUnpriced.
	dropped int64
}

type unpricedKey struct{ provider, model string }

type unpricedModel struct {
	Provider  string    `json:"provider"`
	Model     string    `json:"model"`
	Records   int64     `json:"records"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
}

// maxUnpriced bounds the names remembered: a client sending a new model
// name with every call must not grow the sidecar without bound.
const maxUnpriced = 1000

// observe counts the unpriced records of an accepted request.
func (u *unpricedModels) observe(recs []record.Record, now time.Time, logger *slog.Logger) {
	for i := range recs {
		r := &recs[i]
		if r.HasCost {
			continue
		}
		u.add(r.Provider, r.Model, now, logger)
	}
}

func (u *unpricedModels) add(provider, model string, now time.Time, logger *slog.Logger) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.models == nil {
		u.models = map[unpricedKey]*unpricedModel{}
	}
	k := unpricedKey{provider, model}
	m := u.models[k]
	if m == nil {
		if len(u.models) >= maxUnpriced {
			u.dropped++
			return
		}
		m = &unpricedModel{Provider: provider, Model: model, FirstSeen: now}
		u.models[k] = m
		logger.Warn("a model without a price: its records are stored with a null cost_usd; add a prices: entry to the limits file or a row to llm_model_prices",
			"provider", provider, "model", model)
	}
	m.Records++
	m.LastSeen = now
}

func (u *unpricedModels) list() (models []unpricedModel, dropped int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	models = make([]unpricedModel, 0, len(u.models))
	for _, m := range u.models {
		models = append(models, *m)
	}
	sort.Slice(models, func(i, j int) bool {
		if models[i].Records != models[j].Records {
			return models[i].Records > models[j].Records
		}
		return models[i].Provider+"\x00"+models[i].Model < models[j].Provider+"\x00"+models[j].Model
	})
	return models, u.dropped
}

// servePrices answers GET /v1/prices: with unpriced=1, the models seen
// without a price since start; with a model (and provider), the price
// that applies to such a call now, or 404; without either, where the
// prices come from and the overrides in force.
func (c *Collector) servePrices(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	prices := c.rules().Prices
	if v := q.Get("unpriced"); v != "" {
		if b, err := strconv.ParseBool(v); err != nil || !b {
			writeError(w, &Error{Status: http.StatusBadRequest, Message: "cannot list: unpriced must be 1 or true", Details: []Detail{{Field: "unpriced", Message: "must be 1 or true"}}})
			return
		}
		models, dropped := c.unpriced.list()
		writeJSON(w, http.StatusOK, map[string]any{"unpriced": models, "names_not_kept": dropped})
		return
	}
	if q.Has("model") || q.Has("provider") {
		prov, model, err := c.queryScope(q)
		if err != nil {
			writeError(w, err)
			return
		}
		if model == "" {
			writeError(w, &Error{Status: http.StatusBadRequest, Message: "cannot price: model is required", Details: []Detail{{Field: "model", Message: "is required"}}})
			return
		}
		m, ok := prices.Lookup(prov, model, c.clock.Now())
		if !ok {
			writeError(w, errorf(http.StatusNotFound, "cannot find a price for model %q of provider %q: its records are stored with a null cost_usd", model, prov))
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"provider": prov, "model": model, "price": newPriceJSON(m.Price, m.Source, m.ModelID)})
		return
	}
	overrides := prices.Overrides()
	snap := prices.Snapshot()
	type snapshotJSON struct {
		Source  string `json:"source"`
		Version string `json:"version"`
		Date    string `json:"date"`
	}
	out := struct {
		Snapshot  snapshotJSON `json:"snapshot"`
		Overrides []priceJSON  `json:"overrides"`
	}{Snapshot: snapshotJSON{snap.Source, snap.Version, snap.Date}, Overrides: make([]priceJSON, 0, len(overrides))}
	for _, o := range overrides {
		p := newPriceJSON(pricing.Price{Input: o.Input, CacheRead: o.CacheRead, CacheWrite: o.CacheWrite, Output: o.Output,
			HasCacheRead: o.HasCacheRead, HasCacheWrite: o.HasCacheWrite}, o.Source, o.Model)
		p.Provider = o.Provider
		if !o.From.IsZero() {
			p.From = o.From.UTC().Format(time.RFC3339)
		}
		out.Overrides = append(out.Overrides, p)
	}
	writeJSON(w, http.StatusOK, out)
}

// priceJSON is a price in USD per million tokens.
type priceJSON struct {
	Provider    string     `json:"provider,omitempty"`
	Model       string     `json:"model"`
	Input       usd.Amount `json:"input"`
	CachedInput usd.Amount `json:"cached_input"`
	CacheWrite  usd.Amount `json:"cache_write"`
	Output      usd.Amount `json:"output"`
	// Tiers are the long-context prices, by input tokens above which they apply.
	Tiers  []tierJSON `json:"tiers,omitempty"`
	From   string     `json:"from,omitempty"`
	Source string     `json:"source"`
}

type tierJSON struct {
	InputTokensAbove int64      `json:"input_tokens_above"`
	Input            usd.Amount `json:"input"`
	Output           usd.Amount `json:"output"`
}

func newPriceJSON(p pricing.Price, source, model string) priceJSON {
	j := priceJSON{Model: model, Input: p.Input, CachedInput: p.Input, CacheWrite: p.Input, Output: p.Output, Source: source}
	if p.HasCacheRead {
		j.CachedInput = p.CacheRead
	}
	if p.HasCacheWrite {
		j.CacheWrite = p.CacheWrite
	}
	for _, t := range p.Tiers {
		j.Tiers = append(j.Tiers, tierJSON{InputTokensAbove: t.Above, Input: t.Input, Output: t.Output})
	}
	return j
}

// limitValue is a limit or a remainder as the API shows it: a budget's
// in dollars, others in their units.
func limitValue(u limiter.Unit, n int64) json.Marshaler {
	if u == limiter.USD {
		return usd.Amount(n)
	}
	return units(n)
}

type units int64

func (n units) MarshalJSON() ([]byte, error) { return strconv.AppendInt(nil, int64(n), 10), nil }

// appendLimitValue appends limitValue's JSON.
func appendLimitValue(dst []byte, u limiter.Unit, n int64) []byte {
	if u == limiter.USD {
		return append(dst, usd.Amount(n).String()...)
	}
	return strconv.AppendInt(dst, n, 10)
}
