package proxy

import (
	"fmt"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/llmusage/llmusage/provider"
)

// Headroom says what the proxy does with the provider's own quota, as the
// upstream's latest answer for a key and model said it.
type Headroom uint8

const (
	// HeadroomOff forwards every call the user's limits allow: the
	// provider decides.
	HeadroomOff Headroom = iota
	// HeadroomRespect answers at once, with the sidecar's own 429, a call
	// the provider has just said it would refuse: a resource of the key
	// left at 0 until a reset still to come, or a 429 whose Retry-After
	// still runs.
	HeadroomRespect
)

// ParseHeadroom reads --provider-headroom.
func ParseHeadroom(s string) (Headroom, error) {
	switch s {
	case "off":
		return HeadroomOff, nil
	case "respect":
		return HeadroomRespect, nil
	}
	return HeadroomOff, fmt.Errorf("cannot use --provider-headroom %q: want off or respect", s)
}

// HeadroomObserver counts the calls refused for the provider's quota. The
// exporter implements it (llmusage_proxy_headroom_refusals_total); the
// proxy finds it on Options.RateLimits.
type HeadroomObserver interface {
	// ObserveHeadroomRefusals counts n refusals of calls to provider; the
	// proxy calls it with 0 for each upstream at start, so that the
	// counters exist before the first refusal.
	ObserveHeadroomRefusals(provider string, n int)
}

// maxHeadroomEntries bounds the keys and models the proxy remembers as
// out of quota: the proxy passes on whatever key a client sends, and an
// entry only lives until its resets, so the bound is only reached by a
// flood of exhausted keys.
const maxHeadroomEntries = 10_000

// headroomKey is what a provider's limits apply to, as far as the proxy
// can tell: the provider, the key's fingerprint and the model as sent.
type headroomKey struct {
	provider, key, model string
}

// headroomEntry is what the latest answer for a key said was exhausted.
type headroomEntry struct {
	// observed is when the answer came.
	observed time.Time
	// exhausted are its resources with nothing remaining and a reset to
	// come.
	exhausted []RateLimit
	// retryUntil is when its 429's Retry-After ends; zero without one.
	retryUntil time.Time
	// expires is the last of the resets and of retryUntil: past it the
	// entry says nothing.
	expires time.Time
}

// headroom remembers, per key, the provider's latest word on what is left.
type headroom struct {
	max     int
	mu      sync.Mutex
	entries map[headroomKey]*headroomEntry
}

func newHeadroom() *headroom {
	return &headroom{max: maxHeadroomEntries, entries: map[headroomKey]*headroomEntry{}}
}

// observe takes an upstream answer (status, headers) of kind k for key,
// received at now. The latest answer wins: one that leaves something
// clears what an earlier one said.
func (hr *headroom) observe(key headroomKey, k Kind, status int, h http.Header, now time.Time) {
	e := headroomEntry{observed: now}
	for _, rl := range ParseRateLimits(k, h, now) {
		if !math.IsNaN(rl.Remaining) && rl.Remaining < 1 && rl.Reset.After(now) {
			e.exhausted = append(e.exhausted, rl)
			if rl.Reset.After(e.expires) {
				e.expires = rl.Reset
			}
		}
	}
	if status == http.StatusTooManyRequests {
		if t := provider.ParseRetryAfter(h, now); t.After(now) {
			e.retryUntil = t
			if t.After(e.expires) {
				e.expires = t
			}
		}
	}
	hr.mu.Lock()
	defer hr.mu.Unlock()
	if e.expires.IsZero() {
		delete(hr.entries, key)
		return
	}
	if _, ok := hr.entries[key]; !ok && len(hr.entries) >= hr.max {
		for k, old := range hr.entries {
			if !old.expires.After(now) {
				delete(hr.entries, k)
			}
		}
		// Still full: any entry goes, so that memory stays bounded; the
		// call it would have refused goes upstream, as with off.
		for k := range hr.entries {
			if len(hr.entries) < hr.max {
				break
			}
			delete(hr.entries, k)
		}
	}
	hr.entries[key] = &e
}

// need is what a call asks of each of the provider's resources.
type need struct {
	prompt, maxTokens int64
}

func (n need) of(resource string) float64 {
	switch resource {
	case "requests":
		return 1
	case "input_tokens":
		return float64(n.prompt)
	case "output_tokens":
		return float64(n.maxTokens)
	}
	return float64(n.prompt + n.maxTokens)
}

// wait is how long a call of key that needs n must wait at now before the
// provider would take it, and the resource it waits for ("retry-after"
// for the provider's 429); zero when it can go.
func (hr *headroom) wait(key headroomKey, n need, now time.Time) (time.Duration, string) {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	e := hr.entries[key]
	if e == nil {
		return 0, ""
	}
	if !e.expires.After(now) {
		delete(hr.entries, key)
		return 0, ""
	}
	until, why := e.retryUntil, "retry-after"
	for _, rl := range e.exhausted {
		if t := refilled(rl, e.observed, n.of(rl.Resource)); t.After(until) {
			until, why = t, rl.Resource
		}
	}
	if !until.After(now) {
		return 0, ""
	}
	return until.Sub(now), why
}

// refilled is when an exhausted resource, seen at observed, has units
// again. The providers refill their limits continuously (OpenAI's reset
// is the time until the limit is whole again: 6ms for 1 of 10,000
// requests a minute; Anthropic's limits are token buckets), so the next
// request is back long before the reset: waiting for the reset would
// refuse calls the provider would take. With the limit unknown, only the
// reset is sure.
func refilled(rl RateLimit, observed time.Time, units float64) time.Time {
	if math.IsNaN(rl.Limit) || rl.Limit <= rl.Remaining {
		return rl.Reset
	}
	units = min(max(units, 1), rl.Limit)
	missing := units - rl.Remaining
	span := rl.Reset.Sub(observed)
	return observed.Add(time.Duration(float64(span) * missing / (rl.Limit - rl.Remaining)))
}

// outgoingKey is the fingerprint of the key a call goes out with: the
// sidecar's own for an upstream with one, else the client's.
func outgoingKey(up *Upstream, h http.Header) string {
	if up.Key != "" {
		return KeyFingerprint(http.Header{"X-Api-Key": {up.Key}})
	}
	return KeyFingerprint(h)
}

// refuseForProvider answers a call the provider has just said it would
// refuse: the sidecar's 429, the upstream not called and the user's
// limits not charged.
func (p *Proxy) refuseForProvider(w http.ResponseWriter, up *Upstream, c *call, wait time.Duration, why string) {
	secs := retryAfterSeconds(wait)
	msg := fmt.Sprintf("llmusage: %s has no %s left for key %s and model %s (its last answer said); retry after %d s", up.Provider, why, c.key, c.model, secs)
	if why == "retry-after" {
		msg = fmt.Sprintf("llmusage: %s refused the last call of key %s and model %s with a Retry-After; retry after %d s", up.Provider, c.key, c.model, secs)
	}
	if p.headroomObserver != nil {
		p.headroomObserver.ObserveHeadroomRefusals(up.Provider, 1)
	}
	p.logger.Info("refused a call the provider would refuse (--provider-headroom=respect)", "upstream", up.Name, "provider", up.Provider,
		"model", c.model, "key", c.key, "user", c.user, "resource", why, "retry_after", wait)
	p.tooMany(w, up, wait, msg)
}
