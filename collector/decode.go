package collector

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/llmusage/llmusage/record"
)

// Limits on record fields. Values past them are rejected rather than
// truncated, so that nothing is stored differently from what was sent.
const (
	// MaxIDLength bounds user_id and model, in bytes.
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

// bodyFormat is how a request body is framed.
type bodyFormat int

const (
	formatJSON bodyFormat = iota
	formatNDJSON
)

// parseContentType accepts JSON and NDJSON. A missing Content-Type is
// taken as JSON, which is what a bare client library usually sends.
func parseContentType(r *http.Request) (bodyFormat, error) {
	// A compressed body would otherwise fail as JSON with a puzzling
	// "invalid character"; on loopback compression buys nothing.
	if ce := r.Header.Get("Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		return 0, errorf(http.StatusUnsupportedMediaType, "cannot accept Content-Encoding %q: send the body uncompressed", ce)
	}
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return formatJSON, nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return 0, errorf(http.StatusUnsupportedMediaType, "cannot parse Content-Type %q: %s", ct, err)
	}
	switch mt {
	case "application/json":
		return formatJSON, nil
	case "application/x-ndjson", "application/jsonl", "application/jsonlines", "application/x-jsonlines":
		return formatNDJSON, nil
	}
	return 0, errorf(http.StatusUnsupportedMediaType, "cannot accept Content-Type %q: use application/json or application/x-ndjson", mt)
}

// splitRecords cuts a body into one raw JSON value per record.
func splitRecords(body []byte, format bodyFormat) ([]json.RawMessage, error) {
	if format == formatNDJSON {
		var raws []json.RawMessage
		for line := range bytes.Lines(body) {
			if line = bytes.TrimSpace(line); len(line) > 0 {
				raws = append(raws, line)
			}
		}
		if len(raws) == 0 {
			return nil, errorf(http.StatusBadRequest, "cannot find any record in an empty NDJSON body")
		}
		return raws, nil
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, errorf(http.StatusBadRequest, "cannot find any record in an empty body")
	}
	if trimmed[0] == '[' {
		var raws []json.RawMessage
		if err := json.Unmarshal(trimmed, &raws); err != nil {
			return nil, errorf(http.StatusBadRequest, "cannot parse the JSON array: %s", err)
		}
		return raws, nil
	}
	if !json.Valid(trimmed) {
		var v any
		err := json.Unmarshal(trimmed, &v)
		hint := ""
		if strings.Contains(err.Error(), "after top-level value") {
			hint = " (several records need a JSON array or Content-Type: application/x-ndjson)"
		}
		return nil, errorf(http.StatusBadRequest, "cannot parse the JSON body: %s%s", err, hint)
	}
	return []json.RawMessage{trimmed}, nil
}

// recordFields are the fields of a call record, as the seed's log_llm_call names them.
var recordFields = []string{
	"user_id", "model", "provider", "tokens_used", "prompt_tokens", "completion_tokens",
	"cached_tokens", "reasoning_tokens", "latency_ms", "status", "error_type", "request_id",
	"timestamp", "metadata",
}

// maxFields sizes a parser's member slice: every known field of a record
// fits; more (unknown fields) grow it.
const maxFields = 16

// checkFields are the fields of a quota check.
var checkFields = []string{"user_id", "model", "provider", "tokens", "request_id"}

// fieldParser decodes the fields of one JSON object, collecting a Detail
// for every problem instead of stopping at the first.
type fieldParser struct {
	index int
	// fields are the object's members in order.
	fields []field
	// invalid is set when the value is not a JSON object.
	invalid bool
	details []Detail
}

// field is one member of a JSON object, its value still encoded.
type field struct {
	// name is decoded; it shares the body's bytes unless it had escapes.
	name []byte
	raw  []byte
}

// parsers recycles fieldParsers and their member slices, which would
// otherwise be a third of the garbage a record or a check makes.
type parsers struct{ pool sync.Pool }

// get returns a parser of raw; hand it back with put once done with it.
func (ps *parsers) get(raw json.RawMessage, index int, known []string) *fieldParser {
	p, _ := ps.pool.Get().(*fieldParser)
	if p == nil {
		p = &fieldParser{fields: make([]field, 0, maxFields)}
	}
	p.parse(raw, index, known)
	return p
}

// put recycles p. Its details belong to the caller now; the members are
// cleared so that the pool does not hold request bodies.
func (ps *parsers) put(p *fieldParser) {
	clear(p.fields[:cap(p.fields)])
	p.fields, p.details = p.fields[:0], nil
	ps.pool.Put(p)
}

func (p *fieldParser) parse(raw json.RawMessage, index int, known []string) {
	p.index = index
	// One validating pass, then a scan that only has to find member
	// boundaries: cheaper than decoding into a map and every value twice.
	if !json.Valid(raw) {
		var v any
		err := json.Unmarshal(raw, &v)
		p.fields = p.fields[:0]
		p.invalid = true
		p.fail("", "must be a JSON object, and is not valid JSON: %s", err)
		return
	}
	var ok bool
	if p.fields, ok = scanObject(raw, p.fields[:0]); !ok {
		p.fields = p.fields[:0]
		p.invalid = true
		p.fail("", "must be a JSON object")
		return
	}
	p.invalid = false
	for i, f := range p.fields {
		// encoding/json would take the last silently; which one the
		// client meant is not for the sidecar to guess.
		for _, g := range p.fields[:i] {
			if bytes.Equal(f.name, g.name) {
				p.fail(string(f.name), "is given more than once")
				break
			}
		}
		if !containsBytes(known, f.name) {
			name := string(f.name)
			msg := "unknown field"
			if s := suggest(name, known); s != "" {
				msg += fmt.Sprintf("; did you mean %q?", s)
			}
			p.fail(name, "%s", msg)
		}
	}
}

func (p *fieldParser) fail(field, format string, args ...any) {
	p.details = append(p.details, Detail{Index: p.index, Field: field, Message: fmt.Sprintf(format, args...)})
}

// raw returns a field's JSON, or nil when it is absent or null. (A name
// given twice is refused in parse; raw would take its last value.)
func (p *fieldParser) raw(name string) json.RawMessage {
	for i := len(p.fields) - 1; i >= 0; i-- {
		if string(p.fields[i].name) == name {
			if v := p.fields[i].raw; string(v) != "null" {
				return v
			}
			return nil
		}
	}
	return nil
}

// str decodes a string field. Identifiers (ident) must also be free of
// control characters, since they become label values and log fields.
func (p *fieldParser) str(name string, required, ident bool, maxLen int) string {
	v := p.raw(name)
	if v == nil {
		if required {
			p.fail(name, "is required")
		}
		return ""
	}
	// encoding/json silently replaces invalid UTF-8 with U+FFFD; refuse it
	// instead so that what is stored is what was sent.
	if !utf8.Valid(v) {
		p.fail(name, "must be valid UTF-8")
		return ""
	}
	s, ok := unquote(v)
	if !ok {
		p.fail(name, "must be a string")
		return ""
	}
	// Only an escape can put in a string what the store refuses.
	if bytes.IndexByte(v, '\\') >= 0 {
		if problem := unstorable(v); problem != "" {
			p.fail(name, "%s", problem)
			return ""
		}
	}
	if required && strings.TrimSpace(s) == "" {
		p.fail(name, "must not be empty")
		return ""
	}
	if problem := lengthOrControl(s, maxLen, ident); problem != "" {
		p.fail(name, "%s", problem)
		return ""
	}
	return s
}

// lengthOrControl tells why s, decoded, is over maxLen bytes or, for an
// identifier (a label value and log field), holds control characters; ""
// when it is neither. Intake and the quota reads share it.
func lengthOrControl(s string, maxLen int, ident bool) string {
	switch {
	case len(s) > maxLen:
		return fmt.Sprintf("must be at most %d bytes, got %d", maxLen, len(s))
	case ident && strings.IndexFunc(s, isControl) >= 0:
		return "must not contain control characters"
	}
	return ""
}

// count decodes a non-negative integer field; ok is false when absent or invalid.
func (p *fieldParser) count(name string) (n int64, ok bool) {
	v := p.raw(name)
	if v == nil {
		return 0, false
	}
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil {
		// Accept integral floats such as 12.0, which some JSON encoders emit.
		f, ferr := strconv.ParseFloat(string(v), 64)
		if ferr != nil || f != math.Trunc(f) || math.Abs(f) > MaxTokens {
			p.fail(name, "must be a non-negative integer, got %s", truncate(v))
			return 0, false
		}
		n = int64(f)
	}
	if n < 0 || n > MaxTokens {
		p.fail(name, "must be between 0 and %d, got %d", int64(MaxTokens), n)
		return 0, false
	}
	return n, true
}

func (p *fieldParser) latency(name string) (time.Duration, bool) {
	v := p.raw(name)
	if v == nil {
		return 0, false
	}
	ms, err := strconv.ParseFloat(string(v), 64)
	if err != nil || math.IsNaN(ms) || math.IsInf(ms, 0) {
		p.fail(name, "must be a number of milliseconds, got %s", truncate(v))
		return 0, false
	}
	if ms < 0 || ms > float64(MaxLatency/time.Millisecond) {
		p.fail(name, "must be between 0 and %d milliseconds, got %g", MaxLatency/time.Millisecond, ms)
		return 0, false
	}
	return time.Duration(ms * float64(time.Millisecond)), true
}

func (p *fieldParser) timestamp(name string, now time.Time) time.Time {
	s := p.str(name, false, true, 64)
	if s == "" {
		return now
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	switch {
	case err != nil:
		p.fail(name, "must be an RFC 3339 time such as 2006-01-02T15:04:05Z, got %q", s)
	case t.After(now.Add(MaxFutureSkew)):
		p.fail(name, "must not be more than %s in the future, got %s", MaxFutureSkew, s)
	case t.Before(now.Add(-MaxAge)):
		p.fail(name, "must not be more than %s in the past, got %s", MaxAge, s)
	default:
		return t.UTC()
	}
	return now
}

func (p *fieldParser) object(name string) json.RawMessage {
	v := p.raw(name)
	if v == nil {
		return nil
	}
	if !utf8.Valid(v) {
		p.fail(name, "must be valid UTF-8")
		return nil
	}
	if v[0] != '{' {
		p.fail(name, "must be a JSON object")
		return nil
	}
	if problem := unstorable(v); problem != "" {
		p.fail(name, "%s", problem)
		return nil
	}
	return v
}

// parseRecord validates one raw record and normalises it; a record
// without a request_id gets one in ingest, once the batch is valid.
func (c *Collector) parseRecord(raw json.RawMessage, index int, now time.Time) (record.Record, []Detail) {
	p := c.parsers.get(raw, index, recordFields)
	defer c.parsers.put(p)
	if p.invalid {
		return record.Record{}, p.details
	}
	r := record.Record{
		UserID:    p.str("user_id", true, true, MaxIDLength),
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
	total, hasTotal := p.count("tokens_used")
	switch {
	case !hasTotal:
		r.TotalTokens = r.PromptTokens + r.CompletionTokens
	case total < r.PromptTokens+r.CompletionTokens:
		p.fail("tokens_used", "must be at least prompt_tokens + completion_tokens (%d), got %d", r.PromptTokens+r.CompletionTokens, total)
	default:
		r.TotalTokens = total
	}
	r.Latency, r.HasLatency = p.latency("latency_ms")
	if s := p.str("status", false, true, 16); s != "" {
		if s != record.StatusSuccess && s != record.StatusError {
			p.fail("status", "must be %q or %q, got %q", record.StatusSuccess, record.StatusError, s)
		}
		r.Status = s
	}
	r.Provider = c.resolveProvider(p, r.Model, r.Metadata)
	return r, p.details
}

// checkRequest is a decoded POST /v1/check body.
type checkRequest struct {
	UserID, Model, Provider, RequestID string
	Tokens                             int64
}

func (c *Collector) parseCheck(raw json.RawMessage) (checkRequest, []Detail) {
	p := c.parsers.get(raw, 0, checkFields)
	defer c.parsers.put(p)
	if p.invalid {
		return checkRequest{}, p.details
	}
	req := checkRequest{
		UserID:    p.str("user_id", true, true, MaxIDLength),
		Model:     p.str("model", true, true, MaxIDLength),
		RequestID: p.str("request_id", false, true, MaxRequestIDLength),
	}
	req.Tokens, _ = p.count("tokens")
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
		return NormalizeProvider(prov)
	}
	if metadata != nil {
		var m struct {
			Provider any `json:"provider"`
		}
		if json.Unmarshal(metadata, &m) == nil {
			if s, ok := m.Provider.(string); ok && s != "" && len(s) <= MaxProviderLength && strings.IndexFunc(s, isControl) < 0 {
				return NormalizeProvider(s)
			}
		}
	}
	if model == "" {
		return record.UnknownProvider
	}
	return c.providers.Load().Infer(model)
}

// newRequestID returns a UUID version 7 (RFC 9562): the time in
// milliseconds, then 74 random bits. A record without a request_id can
// still be stored exactly once, and since these IDs grow with time, the
// stores' unique index on request_id takes them at its right edge, where
// random (version 4) IDs dirtied a random index page with every insert.
func newRequestID(now time.Time) string {
	var b [16]byte
	_, _ = rand.Read(b[6:])
	ms := uint64(now.UnixMilli())
	for i := range 6 {
		b[i] = byte(ms >> (40 - 8*i))
	}
	b[6] = b[6]&0x0f | 0x70
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) }

func containsBytes(list []string, b []byte) bool {
	for _, s := range list {
		if s == string(b) {
			return true
		}
	}
	return false
}

// suggest returns the known field closest to name, if it is close enough
// to be a typo.
func suggest(name string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if d := editDistance(name, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func truncate(v []byte) string {
	if len(v) > 32 {
		return string(v[:32]) + "..."
	}
	return string(v)
}

// scanObject lists the members of a JSON object already known to be
// valid JSON; ok is false when it is valid JSON but not an object.
func scanObject(b []byte, fields []field) ([]field, bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, false
	}
	for i = skipSpace(b, i+1); i < len(b) && b[i] != '}'; {
		end := endOfString(b, i)
		name := unquoteBytes(b[i:end])
		i = skipSpace(b, end)
		i = skipSpace(b, i+1) // the colon
		vend := endOfValue(b, i)
		fields = append(fields, field{name: name, raw: b[i:vend]})
		i = skipSpace(b, vend)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
	return fields, true
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// endOfString returns the index after the string starting at b[i].
func endOfString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(b)
}

// endOfValue returns the index after the value starting at b[i].
func endOfValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return endOfString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = endOfString(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
		j++
	}
	return j
}

// unquoteBytes decodes a JSON string known to be valid, sharing v's
// bytes when it has no escapes.
func unquoteBytes(v []byte) []byte {
	if len(v) >= 2 && bytes.IndexByte(v, '\\') < 0 && utf8.Valid(v) {
		return v[1 : len(v)-1]
	}
	s, _ := unquote(v)
	return []byte(s)
}

// unquote decodes a JSON string; ok is false if v is not one. The common
// case, no escapes, costs one allocation.
func unquote(v []byte) (string, bool) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return "", false
	}
	if bytes.IndexByte(v, '\\') < 0 && utf8.Valid(v) {
		return string(v[1 : len(v)-1]), true
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		return "", false
	}
	return s, true
}
