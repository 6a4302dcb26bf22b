package collector

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// field is one member of a JSON object, its value still encoded.
type field struct {
	// name is decoded; it shares the body's bytes unless it had escapes.
	name []byte
	// raw is the value's JSON, sharing the body's bytes.
	raw []byte
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
