// Package glob is the one glob matcher of llmusage: limit rules scope
// models with it, and pricing overrides name models with it.
package glob

// Match matches s against a pattern of literal bytes, "*" (any run of
// bytes, "/" included) and "?" (exactly one byte), ignoring ASCII case as
// provider inference does: "GPT-4o" is a gpt-4* model, or changing the
// case of a model name would escape its limit or its price.
// It backtracks only to the last star, so it runs in O(len(p)*len(s)) at worst.
func Match(p, s string) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si
			pi++
		case pi < len(p) && (p[pi] == '?' || lowerASCII(p[pi]) == lowerASCII(s[si])):
			pi++
			si++
		case star >= 0:
			pi = star + 1
			mark++
			si = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

func lowerASCII(b byte) byte {
	if 'A' <= b && b <= 'Z' {
		return b + 'a' - 'A'
	}
	return b
}
