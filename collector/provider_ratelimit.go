package collector

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/llmusage/llmusage/provider"
)

// ProviderRateLimitObserver is told the provider's own quota that a
// record's provider_ratelimit carries, for the apps that call the
// provider directly rather than through the proxy. The exporter
// implements it; the collector uses it when its Observer does.
type ProviderRateLimitObserver interface {
	// ObserveProviderRateLimit is called once per resource the record
	// reports: limit and remaining are NaN when it did not say, reset is
	// zero then. key is a provider.KeyFingerprint, or "".
	ObserveProviderRateLimit(provider, model, key, resource string, limit, remaining float64, reset time.Time)
	// ObserveProviderRetryAfter is called when the record says when to retry.
	ObserveProviderRetryAfter(provider, model, key string, at time.Time)
}

// providerRateLimitFields are the members of a record's provider_ratelimit.
var providerRateLimitFields = append([]string{"key", "headers", "retry_after_seconds"}, provider.Resources...)

// providerLimitFields are the members of one resource of it.
var providerLimitFields = []string{"limit", "remaining", "reset_seconds"}

// maxProviderWait bounds reset_seconds and retry_after_seconds: the
// longest window a provider documents is a month.
const maxProviderWait = 31 * 24 * 3600

// providerFigures are the provider's own quota figures of one record.
// They go to the metrics at intake and are not stored: the gauges want
// the latest value, which a replay of stored records could only make
// older.
type providerFigures struct {
	key        string
	limits     []provider.RateLimit
	retryAfter time.Time
}

// providerRateLimit parses a record's provider_ratelimit, of a call to
// prov whose answer came at (the record's timestamp), which the relative
// figures count from. nil when absent or invalid.
func (c *Collector) providerRateLimit(p *fieldParser, prov string, at time.Time) *providerFigures {
	const name = "provider_ratelimit"
	var f *providerFigures
	c.subObject(p, name, providerRateLimitFields, func(sp *fieldParser) {
		f = &providerFigures{}
		if key := sp.str("key", false, true, 64); key != "" {
			if !provider.IsKeyFingerprint(key) {
				// Never echo what may be the key itself.
				sp.fail("key", "must be the API key's fingerprint, 8 lower-case hex digits (llmusage.key_fingerprint in the Python client), not the key")
			}
			f.key = key
		}
		figures := false
		for _, resource := range provider.Resources {
			c.subObject(sp, resource, providerLimitFields, func(rp *fieldParser) {
				figures = true
				rl := provider.RateLimit{Resource: resource, Limit: math.NaN(), Remaining: math.NaN()}
				given := false
				if v, ok := rp.figure("limit", MaxTokens); ok {
					rl.Limit, given = v, true
				}
				if v, ok := rp.figure("remaining", MaxTokens); ok {
					rl.Remaining, given = v, true
				}
				if v, ok := rp.figure("reset_seconds", maxProviderWait); ok {
					rl.Reset, given = at.Add(time.Duration(v*float64(time.Second))), true
				}
				if !given && len(rp.details) == 0 {
					rp.fail("", "must give at least one of limit, remaining, reset_seconds")
				}
				f.limits = append(f.limits, rl)
			})
		}
		if v, ok := sp.figure("retry_after_seconds", maxProviderWait); ok {
			figures = true
			f.retryAfter = at.Add(time.Duration(v * float64(time.Second)))
		}
		headers := sp.raw("headers")
		switch {
		case headers != nil && figures:
			sp.fail("", "must give either headers or the figures (requests, tokens, input_tokens, output_tokens, retry_after_seconds), not both")
		case headers != nil:
			if h, ok := sp.headers("headers"); ok {
				f.limits = provider.ParseRateLimits(provider.DialectOf(prov), h, at)
				f.retryAfter = provider.ParseRetryAfter(h, at)
			}
		case !figures && len(sp.details) == 0:
			sp.fail("", "must give headers or at least one of requests, tokens, input_tokens, output_tokens, retry_after_seconds")
		}
		if len(sp.details) > 0 {
			f = nil
		}
	})
	return f
}

// subObject parses member name of p, a JSON object of the known members,
// with fn; its problems are p's, named name.member.
func (c *Collector) subObject(p *fieldParser, name string, known []string, fn func(*fieldParser)) {
	raw := p.raw(name)
	if raw == nil {
		return
	}
	sp := c.parsers.get(raw, p.index, known)
	defer c.parsers.put(sp)
	if !sp.invalid {
		fn(sp)
	}
	for _, d := range sp.details {
		if d.Field == "" {
			d.Field = name
		} else {
			d.Field = name + "." + d.Field
		}
		p.details = append(p.details, d)
	}
}

// figure decodes a non-negative JSON number up to max; ok is false when
// absent or invalid.
func (p *fieldParser) figure(name string, max float64) (float64, bool) {
	v := p.raw(name)
	if v == nil {
		return 0, false
	}
	if c := v[0]; c != '-' && (c < '0' || c > '9') {
		p.fail(name, "must be a number, got %s", truncate(v))
		return 0, false
	}
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil || f < 0 || f > max {
		p.fail(name, "must be a number between 0 and %s, got %s", strconv.FormatFloat(max, 'f', -1, 64), truncate(v))
		return 0, false
	}
	return f, true
}

// headers decodes an object of header names and string values, as an
// SDK's answer has them.
func (p *fieldParser) headers(name string) (http.Header, bool) {
	v := p.raw(name)
	var m map[string]any
	if err := json.Unmarshal(v, &m); err != nil || v[0] != '{' {
		p.fail(name, "must be a JSON object of header names and string values")
		return nil, false
	}
	h := make(http.Header, len(m))
	ok := true
	for k, val := range m {
		s, isString := val.(string)
		if !isString {
			p.fail(name+"."+k, "must be a string, as the answer's header was, got a JSON %s", jsonType(val))
			ok = false
			continue
		}
		h.Set(strings.TrimSpace(k), s)
	}
	return h, ok
}

// jsonType names the JSON type of a value json.Unmarshal made.
func jsonType(v any) string {
	switch v.(type) {
	case float64:
		return "number"
	case bool:
		return "boolean"
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case nil:
		return "null"
	}
	return "value"
}
