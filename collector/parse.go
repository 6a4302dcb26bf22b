package collector

import (
	"bytes"
	"encoding/json"
	"strings"
	"time"

	"github.com/llmusage/llmusage/provider"
	"github.com/llmusage/llmusage/record"
)

// Limits on record fields. Values past them are rejected rather than
// truncated, so that nothing is stored differently from what was sent.
const (
	// MaxIDLength bounds user_id, team_id and model, in bytes.
	MaxIDLength = 256
	// MaxProviderLength bounds provider, in bytes.
	MaxProviderLength = 64
	// MaxRequestIDLength bounds request_id, in bytes.
	MaxRequestIDLength = 128
	// MaxErrorTypeLength bounds error_type, in bytes.
	MaxErrorTypeLength = 256
	// MaxTokens bounds each token count of one call.
	MaxTokens = 1_000_000_000_000
	// MaxLatency bounds latency_ms: a day.
	MaxLatency = 24 * time.Hour
	// MaxFutureSkew is how far in the future a timestamp may be, for clock skew.
	MaxFutureSkew = 5 * time.Minute
	// MaxAge is how far in the past a timestamp may be.
	MaxAge = 31 * 24 * time.Hour
)

// recordFields are the fields of a call record, as the seed's log_llm_call names them.
var recordFields = []string{
	"user_id", "model", "provider", "tokens_used", "prompt_tokens", "completion_tokens",
	"cached_tokens", "reasoning_tokens", "latency_ms", "status", "error_type", "request_id",
	"timestamp", "metadata", "cache_write_tokens", "cost_usd", "team_id", "provider_ratelimit",
}

// maxFields sizes a parser's member slice: every known field of a record
// fits; more (unknown fields) grow it.
const maxFields = 18

// checkFields are the fields of a quota check.
var checkFields = []string{"user_id", "model", "provider", "tokens", "request_id", "prompt_tokens", "max_tokens", "team_id"}

// parseRecord validates one raw record and normalises it; a record
// without a request_id gets one in ingest, once the batch is valid. fig
// is its provider_ratelimit, nil when it has none.
func (c *Collector) parseRecord(raw json.RawMessage, index int, now time.Time) (r record.Record, fig *providerFigures, details []Detail) {
	p := c.parsers.get(raw, index, recordFields)
	defer c.parsers.put(p)
	if p.invalid {
		return record.Record{}, nil, p.details
	}
	r = record.Record{
		UserID:    p.str("user_id", true, true, MaxIDLength),
		TeamID:    p.str("team_id", false, true, MaxIDLength),
		Model:     p.str("model", true, true, MaxIDLength),
		ErrorType: p.str("error_type", false, false, MaxErrorTypeLength),
		RequestID: p.str("request_id", false, true, MaxRequestIDLength),
		Timestamp: p.timestamp("timestamp", now),
		// A copy: the body's buffer is recycled once the request is answered.
		Metadata: bytes.Clone(p.object("metadata")),
		Status:   record.StatusSuccess,
	}
	r.PromptTokens, _ = p.count("prompt_tokens")
	r.CompletionTokens, _ = p.count("completion_tokens")
	r.CachedTokens, _ = p.count("cached_tokens")
	r.ReasoningTokens, _ = p.count("reasoning_tokens")
	if n, ok := p.count("cache_write_tokens"); ok {
		r.CacheWriteTokens = n
		if problem := cacheProblem(r.CachedTokens, n, r.PromptTokens); problem != "" {
			p.fail("cache_write_tokens", "%s", problem)
		}
	}
	r.Cost, r.HasCost = p.amount("cost_usd")
	total, hasTotal := p.count("tokens_used")
	switch {
	case !hasTotal:
		r.TotalTokens = r.PromptTokens + r.CompletionTokens
	case totalProblem(total, r.PromptTokens+r.CompletionTokens) != "":
		p.fail("tokens_used", "%s", totalProblem(total, r.PromptTokens+r.CompletionTokens))
	default:
		r.TotalTokens = total
	}
	r.Latency, r.HasLatency = p.latency("latency_ms")
	if s := p.str("status", false, true, 16); s != "" {
		if problem := statusProblem(s); problem != "" {
			p.fail("status", "%s", problem)
		}
		r.Status = s
	}
	r.Provider = c.resolveProvider(p, r.Model, r.Metadata)
	if !r.HasCost {
		r.Cost, r.HasCost = c.rules().Prices.Cost(r.Provider, r.Model, r.Timestamp, usageOf(&r))
	}
	fig = c.providerRateLimit(p, r.Provider, r.Timestamp)
	return r, fig, p.details
}

// checkRequest is a decoded POST /v1/check body.
type checkRequest struct {
	// UserID and Model are required.
	UserID, Model string
	// TeamID is the team the call is for; empty for none.
	TeamID string
	// Provider is given or inferred, as for a record.
	Provider string
	// RequestID is the client's, or a new one for the record to send back.
	RequestID string
	// Tokens is the client's estimate of the call's tokens; 0 when absent.
	Tokens int64
	// PromptTokens and MaxTokens split the estimate, for its cost; 0 when absent.
	PromptTokens, MaxTokens int64
}

func (c *Collector) parseCheck(raw json.RawMessage) (checkRequest, []Detail) {
	p := c.parsers.get(raw, 0, checkFields)
	defer c.parsers.put(p)
	if p.invalid {
		return checkRequest{}, p.details
	}
	req := checkRequest{
		UserID:    p.str("user_id", true, true, MaxIDLength),
		TeamID:    p.str("team_id", false, true, MaxIDLength),
		Model:     p.str("model", true, true, MaxIDLength),
		RequestID: p.str("request_id", false, true, MaxRequestIDLength),
	}
	req.Tokens, _ = p.count("tokens")
	req.PromptTokens, _ = p.count("prompt_tokens")
	req.MaxTokens, _ = p.count("max_tokens")
	if split := req.PromptTokens + req.MaxTokens; req.Tokens == 0 {
		req.Tokens = split
	} else if split > req.Tokens {
		p.fail("tokens", "must be at least prompt_tokens + max_tokens (%d), got %d", split, req.Tokens)
	}
	req.Provider = c.resolveProvider(p, req.Model, nil)
	if req.RequestID == "" {
		req.RequestID = newRequestID(c.clock.Now())
	}
	return req, p.details
}

// resolveProvider takes the provider field, else metadata.provider, else
// infers it from the model name.
func (c *Collector) resolveProvider(p *fieldParser, model string, metadata json.RawMessage) string {
	if prov := p.str("provider", false, true, MaxProviderLength); prov != "" {
		return provider.Normalize(prov)
	}
	if metadata != nil {
		var m struct {
			Provider any `json:"provider"`
		}
		if json.Unmarshal(metadata, &m) == nil {
			if s, ok := m.Provider.(string); ok && s != "" && len(s) <= MaxProviderLength && strings.IndexFunc(s, isControl) < 0 {
				return provider.Normalize(s)
			}
		}
	}
	if model == "" {
		return record.UnknownProvider
	}
	return c.rules().Providers.Infer(model)
}
