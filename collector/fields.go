package collector

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/llmusage/llmusage/internal/suggest"
	"github.com/llmusage/llmusage/usd"
)

// fieldParser decodes the fields of one JSON object, collecting a Detail
// for every problem instead of stopping at the first.
type fieldParser struct {
	// index is the record's position in the body, for its Details.
	index int
	// fields are the object's members in order.
	fields []field
	// invalid is set when the value is not a JSON object.
	invalid bool
	// details are the problems found so far, in the order found.
	details []Detail
}

// parsers recycles fieldParsers and their member slices, which would
// otherwise be a third of the garbage a record or a check makes.
type parsers struct {
	// pool holds *fieldParser.
	pool sync.Pool
}

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
			if s := suggest.Nearest(name, known); s != "" {
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
	if problem := textProblem(s, required, ident, maxLen); problem != "" {
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
	if problem := countProblem(n); problem != "" {
		p.fail(name, "%s", problem)
		return 0, false
	}
	return n, true
}

// amount decodes a non-negative JSON number of dollars, exactly; ok is
// false when absent or invalid.
func (p *fieldParser) amount(name string) (usd.Amount, bool) {
	v := p.raw(name)
	if v == nil {
		return 0, false
	}
	if len(v) > 0 && (v[0] == '"' || v[0] == '{' || v[0] == '[' || v[0] == 't' || v[0] == 'f') {
		p.fail(name, "must be a number of US dollars, got %s", truncate(v))
		return 0, false
	}
	a, err := usd.Parse(string(v))
	if err != nil {
		p.fail(name, "must be a number of US dollars between 0 and %d: %s", int64(usd.Max/usd.Dollar), err)
		return 0, false
	}
	return a, true
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
	if problem := latencyProblem(ms); problem != "" {
		p.fail(name, "%s", problem)
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
	if err != nil {
		p.fail(name, "must be an RFC 3339 time such as 2006-01-02T15:04:05Z, got %q", s)
		return now
	}
	if problem := timestampProblem(t, now, s); problem != "" {
		p.fail(name, "%s", problem)
		return now
	}
	return t.UTC()
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

func isControl(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) }

func containsBytes(list []string, b []byte) bool {
	for _, s := range list {
		if s == string(b) {
			return true
		}
	}
	return false
}

func truncate(v []byte) string {
	if len(v) > 32 {
		return string(v[:32]) + "..."
	}
	return string(v)
}
