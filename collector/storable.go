package collector

import (
	"fmt"
	"strconv"
	"unicode/utf16"
)

// unstorable tells why v, a valid JSON value, cannot be stored byte for
// byte, or returns "" when it can. Postgres refuses in text and jsonb what
// JSON allows: \u0000, surrogate escapes without their pair, and numbers
// beyond its numeric type. A record the store refuses would stay at the
// head of the queue, so such values are refused at intake instead, where
// the client still learns of it. (encoding/json would also turn a lone
// surrogate into U+FFFD, storing something other than what was sent.)
func unstorable(v []byte) string {
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '"':
			for i++; v[i] != '"'; i++ {
				if v[i] != '\\' {
					continue
				}
				i++
				if v[i] != 'u' {
					continue
				}
				r := hex4(v[i+1:])
				i += 4
				switch {
				case r == 0:
					return `must not contain \u0000 (NUL)`
				case r >= 0xDC00 && r <= 0xDFFF:
					return fmt.Sprintf(`must not contain a lone low surrogate \u%04x`, r)
				case r >= 0xD800 && r <= 0xDBFF:
					if i+6 < len(v) && v[i+1] == '\\' && v[i+2] == 'u' {
						if lo := hex4(v[i+3:]); utf16.DecodeRune(r, lo) != 0xFFFD {
							i += 6
							continue
						}
					}
					return fmt.Sprintf(`must not contain a high surrogate \u%04x without its low half`, r)
				}
			}
		case c == '-' || c >= '0' && c <= '9':
			j := i
			for j < len(v) && isNumberByte(v[j]) {
				j++
			}
			if problem := unstorableNumber(v[i:j]); problem != "" {
				return problem
			}
			i = j - 1
		}
	}
	return ""
}

// maxNumberLength bounds a number's text: Postgres' numeric holds 131,072
// digits before the point and 16,383 after, far more than any metadata
// needs, and a bound in bytes is simpler to state than one in digits.
const maxNumberLength = 1000

// unstorableNumber checks one JSON number: within the range of a double,
// not so small that it would round to zero, and at most maxNumberLength
// bytes long.
func unstorableNumber(num []byte) string {
	if len(num) > maxNumberLength {
		return fmt.Sprintf("must not hold a number longer than %d characters", maxNumberLength)
	}
	f, err := strconv.ParseFloat(string(num), 64)
	if err != nil || f == 0 && hasNonZeroDigit(num) {
		return fmt.Sprintf("must hold numbers within the range of a double (1e-307 to 1.8e308 in magnitude), got %s", truncate(num))
	}
	return ""
}

func isNumberByte(c byte) bool {
	return c >= '0' && c <= '9' || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'
}

// hasNonZeroDigit tells whether num's mantissa (before any exponent) has a
// digit other than 0.
func hasNonZeroDigit(num []byte) bool {
	for _, c := range num {
		if c == 'e' || c == 'E' {
			return false
		}
		if c >= '1' && c <= '9' {
			return true
		}
	}
	return false
}

// hex4 decodes the four hex digits that follow \u in valid JSON.
func hex4(b []byte) rune {
	var r rune
	for _, c := range b[:4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		default:
			r |= rune(c - 'A' + 10)
		}
	}
	return r
}
