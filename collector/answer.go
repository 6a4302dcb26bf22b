package collector

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/llmusage/llmusage/limiter"
)

// The answers on the hot paths (a check, an accepted request) are encoded
// by hand into recycled buffers: encoding/json's reflection and a fresh
// encoder per answer made a third of a check's garbage, and garbage is
// what stalls a busy sidecar on its collections. The bytes are those
// encoding/json writes (TestAnswersMatchEncodingJSON holds them to that).

// scratch is one request's recycled memory.
type scratch struct {
	// body holds the request body; nothing parsed from it may keep it.
	body []byte
	// out holds the answer.
	out []byte
	// limits receives the bucket statuses of a check.
	limits []limiter.Status
}

// maxRecycled bounds what a recycled buffer may keep: a rare huge batch
// should not stay in memory for ever.
const maxRecycled = 256 << 10

type scratches struct{ pool sync.Pool }

func (ss *scratches) get() *scratch {
	if s, ok := ss.pool.Get().(*scratch); ok {
		return s
	}
	return &scratch{}
}

func (ss *scratches) put(s *scratch) {
	if cap(s.body) > maxRecycled {
		s.body = nil
	}
	if cap(s.out) > maxRecycled {
		s.out = nil
	}
	clear(s.limits[:cap(s.limits)]) // they hold scope strings
	s.body, s.out, s.limits = s.body[:0], s.out[:0], s.limits[:0]
	ss.pool.Put(s)
}

// Shared header values: assigning these costs nothing, where Header.Set
// allocates a slice each time. Nothing appends to them in place.
var (
	jsonContentType = []string{"application/json"}
	noSniff         = []string{"nosniff"}
	retryAfterOne   = []string{"1"}
)

// writeAnswer sends body, already encoded as JSON, with status.
func writeAnswer(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h["X-Content-Type-Options"] = noSniff
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// appendCheckAnswer encodes the answer to a check.
func appendCheckAnswer(dst []byte, d limiter.Decision, requestID, provider string, retryAfterSeconds int64) []byte {
	dst = append(dst, `{"allowed":`...)
	dst = strconv.AppendBool(dst, d.Allowed)
	dst = append(dst, `,"request_id":`...)
	dst = appendJSONString(dst, requestID)
	dst = append(dst, `,"provider":`...)
	dst = appendJSONString(dst, provider)
	if retryAfterSeconds != 0 {
		dst = append(dst, `,"retry_after_seconds":`...)
		dst = strconv.AppendInt(dst, retryAfterSeconds, 10)
	}
	dst = append(dst, `,"limits":`...)
	dst = appendLimits(dst, d.Limits)
	return append(dst, "}\n"...)
}

// appendAccepted encodes the answer to accepted records.
func appendAccepted(dst []byte, n int) []byte {
	dst = append(dst, `{"accepted":`...)
	dst = strconv.AppendInt(dst, int64(n), 10)
	return append(dst, "}\n"...)
}

// appendLimits encodes statuses as limitsJSON does.
func appendLimits(dst []byte, statuses []limiter.Status) []byte {
	dst = append(dst, '[')
	for i, s := range statuses {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"limit_type":`...)
		dst = appendJSONString(dst, s.Window.String())
		dst = append(dst, `,"unit":`...)
		dst = appendJSONString(dst, s.Unit.String())
		dst = append(dst, `,"limit":`...)
		dst = appendLimitValue(dst, s.Unit, s.Limit)
		dst = append(dst, `,"remaining":`...)
		dst = appendLimitValue(dst, s.Unit, s.Remaining)
		dst = append(dst, `,"reset_at":"`...)
		dst = roundUpToSecond(s.ResetAt).AppendFormat(dst, time.RFC3339)
		dst = append(dst, '"')
		if s.Provider != "" {
			dst = append(dst, `,"provider":`...)
			dst = appendJSONString(dst, s.Provider)
		}
		if s.Model != "" {
			dst = append(dst, `,"model":`...)
			dst = appendJSONString(dst, s.Model)
		}
		dst = append(dst, '}')
	}
	return append(dst, ']')
}

// appendJSONString quotes s as encoding/json does. Identifiers are plain
// ASCII; anything else takes encoding/json itself (HTML-safe escapes,
// U+2028 and U+2029, invalid UTF-8).
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s)
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
