package exporter

import (
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// OverflowKey is the key label value of the provider quota series of API
// keys past the cap of distinct keys.
const OverflowKey = "__other__"

// maxProviderKeys caps the distinct key fingerprints of the provider quota
// series: a deployment uses a few keys, but the proxy passes on whatever
// key a client sends.
const maxProviderKeys = 100

// providerLimits exports the providers' own rate limits as the proxy reads
// them off the upstream answers, or a record's provider_ratelimit carries
// them (llm_provider_ratelimit_*, the latest value per provider, model,
// resource and key), the latest retry-after per provider, model and key,
// and the upstreams' 429s. Provider
// and model go through the model guard, like the usage series, and expire
// with it; a series not updated for the TTL goes too, as do idle keys.
type providerLimits struct {
	models  *modelGuard
	ttl     time.Duration
	maxKeys int

	mu        sync.Mutex
	limits    map[providerLimitKey]*providerLimit
	retry     map[providerRetryKey]*providerRetry
	throttled map[modelPair]*providerThrottled
	// keys holds when each key fingerprint was last seen.
	keys map[string]time.Time

	limitDesc, remainingDesc, resetDesc, retryDesc, throttledDesc *prometheus.Desc
}

type providerRetryKey struct {
	pair modelPair
	key  string
}

// providerRetry is the latest retry-after: when it ends.
type providerRetry struct {
	at, seen time.Time
}

type providerLimitKey struct {
	pair          modelPair
	resource, key string
}

// providerLimit is the latest value of each gauge; NaN or zero for one
// never sent.
type providerLimit struct {
	limit, remaining float64
	reset            time.Time
	seen             time.Time
}

type providerThrottled struct {
	n    float64
	seen time.Time
}

func newProviderLimits(models *modelGuard, ttl time.Duration) *providerLimits {
	labels := []string{"provider", "model", "resource", "key"}
	return &providerLimits{
		models:    models,
		ttl:       ttl,
		maxKeys:   maxProviderKeys,
		limits:    map[providerLimitKey]*providerLimit{},
		retry:     map[providerRetryKey]*providerRetry{},
		throttled: map[modelPair]*providerThrottled{},
		keys:      map[string]time.Time{},
		limitDesc: prometheus.NewDesc("llm_provider_ratelimit_limit",
			"The provider's own rate limit, as its latest answer said (through the proxy, or a record's provider_ratelimit), by provider, model (as sent upstream), resource (requests, tokens, input_tokens, output_tokens) and key (a fingerprint of the API key, never the key).",
			labels, nil),
		remainingDesc: prometheus.NewDesc("llm_provider_ratelimit_remaining",
			"What is left of the provider's own rate limit, as its latest answer said, by provider, model, resource and key.",
			labels, nil),
		resetDesc: prometheus.NewDesc("llm_provider_ratelimit_reset_seconds",
			"Seconds until the provider's own rate limit is whole again, from its latest answer's reset header (0 once past), by provider, model, resource and key.",
			labels, nil),
		retryDesc: prometheus.NewDesc("llm_provider_retry_after_seconds",
			"Seconds until the provider's latest retry-after (retry-after-ms, retry-after) says to retry, counted down at scrape (0 once past), by provider, model and key.",
			[]string{"provider", "model", "key"}, nil),
		throttledDesc: prometheus.NewDesc("llm_provider_throttled_total",
			"Upstream answers through the proxy that were the provider's own 429 (not the sidecar's), by provider and model.",
			[]string{"provider", "model"}, nil),
	}
}

// keyLabel returns the key label value of fingerprint key at now. p.mu is held.
func (p *providerLimits) keyLabel(key string, now time.Time) string {
	if _, ok := p.keys[key]; ok || len(p.keys) < p.maxKeys {
		p.keys[key] = now
		return key
	}
	return OverflowKey
}

func (p *providerLimits) observe(now time.Time, provider, model, key, resource string, limit, remaining float64, reset time.Time) {
	pair, _ := p.models.label(labelValue(provider), labelValue(model), p.models.nanos(now))
	p.mu.Lock()
	defer p.mu.Unlock()
	k := providerLimitKey{pair: pair, resource: labelValue(resource), key: p.keyLabel(labelValue(key), now)}
	l := p.limits[k]
	if l == nil {
		l = &providerLimit{limit: math.NaN(), remaining: math.NaN()}
		p.limits[k] = l
	}
	// An answer that leaves a value out (an error may carry only some
	// headers) keeps the last one.
	if !math.IsNaN(limit) {
		l.limit = limit
	}
	if !math.IsNaN(remaining) {
		l.remaining = remaining
	}
	if !reset.IsZero() {
		l.reset = reset
	}
	l.seen = now
}

func (p *providerLimits) observeRetry(now time.Time, provider, model, key string, at time.Time) {
	pair, _ := p.models.label(labelValue(provider), labelValue(model), p.models.nanos(now))
	p.mu.Lock()
	defer p.mu.Unlock()
	k := providerRetryKey{pair: pair, key: p.keyLabel(labelValue(key), now)}
	r := p.retry[k]
	if r == nil {
		r = &providerRetry{}
		p.retry[k] = r
	}
	r.at, r.seen = at, now
}

func (p *providerLimits) observeAnswer(now time.Time, provider, model string, throttled bool) {
	pair, _ := p.models.label(labelValue(provider), labelValue(model), p.models.nanos(now))
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.throttled[pair]
	if t == nil {
		// Made at 0 by the first answer, so that rate() sees the first 429.
		t = &providerThrottled{}
		p.throttled[pair] = t
	}
	if throttled {
		t.n++
	}
	t.seen = now
}

// expire removes the series of the pairs the model guard expired and
// those idle longer than the TTL at now, and forgets idle keys.
func (p *providerLimits) expire(now time.Time, pairs map[modelPair]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, l := range p.limits {
		if pairs[k.pair] || now.Sub(l.seen) > p.ttl {
			delete(p.limits, k)
		}
	}
	for k, r := range p.retry {
		if pairs[k.pair] || now.Sub(r.seen) > p.ttl {
			delete(p.retry, k)
		}
	}
	for pair, t := range p.throttled {
		if pairs[pair] || now.Sub(t.seen) > p.ttl {
			delete(p.throttled, pair)
		}
	}
	for k, seen := range p.keys {
		if now.Sub(seen) > p.ttl {
			delete(p.keys, k)
		}
	}
}

func (p *providerLimits) Describe(ch chan<- *prometheus.Desc) {
	ch <- p.limitDesc
	ch <- p.remainingDesc
	ch <- p.resetDesc
	ch <- p.retryDesc
	ch <- p.throttledDesc
}

// collectAt sends the series, the reset gauges counted from now.
func (p *providerLimits) collectAt(ch chan<- prometheus.Metric, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, l := range p.limits {
		lv := []string{k.pair.provider, k.pair.model, k.resource, k.key}
		if !math.IsNaN(l.limit) {
			ch <- prometheus.MustNewConstMetric(p.limitDesc, prometheus.GaugeValue, l.limit, lv...)
		}
		if !math.IsNaN(l.remaining) {
			ch <- prometheus.MustNewConstMetric(p.remainingDesc, prometheus.GaugeValue, l.remaining, lv...)
		}
		if !l.reset.IsZero() {
			ch <- prometheus.MustNewConstMetric(p.resetDesc, prometheus.GaugeValue, max(l.reset.Sub(now).Seconds(), 0), lv...)
		}
	}
	for k, r := range p.retry {
		ch <- prometheus.MustNewConstMetric(p.retryDesc, prometheus.GaugeValue, max(r.at.Sub(now).Seconds(), 0), k.pair.provider, k.pair.model, k.key)
	}
	for pair, t := range p.throttled {
		ch <- prometheus.MustNewConstMetric(p.throttledDesc, prometheus.CounterValue, t.n, pair.provider, pair.model)
	}
}

// providerLimitsCollector collects providerLimits on the exporter's clock.
type providerLimitsCollector struct {
	*providerLimits
	e *Exporter
}

func (c providerLimitsCollector) Collect(ch chan<- prometheus.Metric) {
	c.collectAt(ch, c.e.clock.Now())
}

// ObserveProviderRateLimit records one of a provider's rate limits as an
// upstream answer through the proxy said it (proxy.RateLimitObserver), or
// a record carried it (collector.ProviderRateLimitObserver).
func (e *Exporter) ObserveProviderRateLimit(provider, model, key, resource string, limit, remaining float64, reset time.Time) {
	e.providerLimits.observe(e.clock.Now(), provider, model, key, resource, limit, remaining, reset)
}

// ObserveProviderRetryAfter records when a provider's latest answer said
// to retry (proxy.RateLimitObserver, collector.ProviderRateLimitObserver).
func (e *Exporter) ObserveProviderRetryAfter(provider, model, key string, at time.Time) {
	e.providerLimits.observeRetry(e.clock.Now(), provider, model, key, at)
}

// ObserveProviderAnswer counts an upstream answer through the proxy, and
// its 429s in llm_provider_throttled_total (proxy.RateLimitObserver).
func (e *Exporter) ObserveProviderAnswer(provider, model string, throttled bool) {
	e.providerLimits.observeAnswer(e.clock.Now(), provider, model, throttled)
}
