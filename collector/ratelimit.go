package collector

import (
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/llmusage/llmusage/limiter"
)

// The IETF RateLimit fields, as draft-ietf-httpapi-ratelimit-headers-11
// (the httpapi working group's current draft) spells them: two
// Structured Field lists (RFC 9651), one item each here, for the tightest
// bucket of a check:
//
//	RateLimit-Policy: "minute-requests";q=100;w=60
//	RateLimit: "minute-requests";r=0;t=12
//
// q is the quota, w the window in seconds, r the quota left and t the
// "effective window", the seconds within which no more than r may be
// used: until the bucket is full again, or, on a refusal, the wait
// (the draft wants Retry-After no earlier than the end of t). The draft's
// quota units (qu) are requests, content-bytes and concurrent-requests,
// and its default requests: a bucket of tokens or USD says its unit in
// the vendor parameter llmusage-unit ("tokens", "usd-micros": a budget
// counts in millionths of a dollar here, nano-dollars would overflow the
// 15 digits of a Structured Field integer), and in the policy's name. A
// concurrency limit is the draft's concurrent-requests, without w:
//
//	RateLimit-Policy: "concurrent";q=5;qu="concurrent-requests"

// sfMaxInt is the largest Structured Field integer.
const sfMaxInt = 999_999_999_999_999

// RateLimitPolicyName names a bucket's policy: its limit_type and unit,
// after its pool for a shared one ("minute-requests",
// "all-minute-requests", "team-day-usd").
func RateLimitPolicyName(s limiter.Status) string {
	return string(appendPolicyName(nil, s))
}

func appendPolicyName(b []byte, s limiter.Status) []byte {
	if s.Per != limiter.PerUser {
		b = append(b, s.Per.String()...)
		b = append(b, '-')
	}
	if s.Unit == limiter.Concurrent {
		return append(b, "concurrent"...)
	}
	b = append(b, s.Window.String()...)
	b = append(b, '-')
	return append(b, s.Unit.String()...)
}

// SetRateLimit sets the RateLimit-Policy and RateLimit fields of the
// decision's tightest bucket on h, when it has one.
func (c *Collector) SetRateLimit(h http.Header, d limiter.Decision) {
	setRateLimit(h, d, c.clock.Now())
}

func setRateLimit(h http.Header, d limiter.Decision, now time.Time) {
	if d.Tightest < 0 || d.Tightest >= len(d.Limits) {
		return
	}
	s := d.Limits[d.Tightest]
	var t int64
	if d.Allowed {
		t = max(ceilSeconds(s.ResetAt.Sub(now)), 0)
	} else {
		t = max(ceilSeconds(d.RetryAfter), 1) // the Retry-After sent with it
	}
	b := make([]byte, 0, 96)
	b = appendSFName(b, s)
	b = append(b, ";q="...)
	b = strconv.AppendInt(b, sfValue(s.Unit, s.Limit), 10)
	if s.Unit != limiter.Concurrent { // calls in flight have no window
		b = append(b, ";w="...)
		b = strconv.AppendInt(b, int64(math.Ceil(s.Window.Duration().Seconds())), 10)
	}
	b = appendSFUnit(b, s.Unit)
	n := len(b)
	b = appendSFName(b, s)
	b = append(b, ";r="...)
	b = strconv.AppendInt(b, sfValue(s.Unit, s.Remaining), 10)
	b = append(b, ";t="...)
	b = strconv.AppendInt(b, min(t, sfMaxInt), 10)
	b = appendSFUnit(b, s.Unit)
	all := string(b)
	h["Ratelimit-Policy"] = []string{all[:n]}
	h["Ratelimit"] = []string{all[n:]}
}

// appendSFName appends a bucket's policy name as a Structured Field
// string; names are made of limit types, units and pools, plain ASCII
// letters and '-'.
func appendSFName(b []byte, s limiter.Status) []byte {
	b = append(b, '"')
	b = appendPolicyName(b, s)
	return append(b, '"')
}

func appendSFUnit(b []byte, u limiter.Unit) []byte {
	switch u {
	case limiter.Tokens:
		return append(b, `;llmusage-unit="tokens"`...)
	case limiter.USD:
		return append(b, `;llmusage-unit="usd-micros"`...)
	case limiter.Concurrent:
		return append(b, `;qu="concurrent-requests"`...)
	}
	return b
}

// sfValue is a bucket's amount in the unit the fields say: USD in
// millionths of a dollar (rounded down), bounded to a Structured Field
// integer.
func sfValue(u limiter.Unit, n int64) int64 {
	if u == limiter.USD {
		n /= 1000
	}
	return min(max(n, 0), sfMaxInt)
}
