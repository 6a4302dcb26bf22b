package glob

import (
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	f := func(pattern, s string, resultExpected bool) {
		t.Helper()
		result := Match(pattern, s)
		if result != resultExpected {
			t.Fatalf("unexpected Match(%q, %q); got %v; want %v", pattern, s, result, resultExpected)
		}
	}

	// trailing star
	f("gpt-4*", "gpt-4o", true)
	f("gpt-4*", "gpt-4", true)
	f("gpt-4*", "gpt-4o-mini-2024-07-18", true)
	f("gpt-4*", "gpt-3.5", false)
	f("gpt-4*", "gpt-", false)
	f("gpt-4*", "xgpt-4o", false)
	// ASCII case is ignored, as provider inference ignores it
	f("gpt-4*", "GPT-4o", true)
	f("GPT-4*", "gpt-4o", true)
	f("Claude-3-Opus", "claude-3-OPUS", true)
	f("gpt-4*", "GPT-3.5", false)

	// a lone star matches anything, the empty string included
	f("*", "", true)
	f("*", "gpt-4o", true)
	f("*", "meta-llama/Llama-3-70b", true)
	f("**", "", true)
	f("**", "abc", true)

	// star matches slashes
	f("meta-llama/*", "meta-llama/Llama-3-70b", true)
	f("meta-llama/*", "meta-llama/", true)
	f("meta-llama/*", "meta-llama/org/sub/model", true)
	f("meta-llama/*", "meta-llama", false)
	f("meta-llama/*", "mistralai/Mixtral-8x7B", false)
	f("*/Llama-3*", "meta-llama/Llama-3-70b", true)
	f("*/Llama-3*", "Llama-3-70b", false)

	// question mark matches exactly one character
	f("gpt-4?", "gpt-4o", true)
	f("gpt-4?", "gpt-4", false)
	f("gpt-4?", "gpt-4o1", false)
	f("?", "a", true)
	f("?", "/", true)
	f("?", "", false)
	f("?", "ab", false)
	f("*?", "", false)
	f("*?", "a", true)
	f("o?-mini", "o1-mini", true)
	f("o?-mini", "o3-mini", true)
	f("o?-mini", "o-mini", false)

	// empty pattern matches only the empty string
	f("", "", true)
	f("", "a", false)

	// literal pattern
	f("gpt-4o", "gpt-4o", true)
	f("gpt-4o", "gpt-4o-mini", false)
	f("gpt-4o", "gpt-4", false)

	// multiple stars
	f("*mini*", "gpt-4o-mini", true)
	f("*mini*", "o3-mini-high", true)
	f("*mini*", "mini", true)
	f("*mini*", "gpt-4o", false)
	f("*mini*", "minx", false)
	f("*mini*", "mimini", true)
	f("a*b*c", "abc", true)
	f("a*b*c", "axxbyyc", true)
	f("a*b*c", "abxbc", true)
	f("a*b*c", "acb", false)
	f("a*b*c", "abcx", false)
	f("*a*a*a*", "aaa", true)
	f("*a*a*a*", "aXaXa", true)
	f("*a*a*a*", "aa", false)

	// backtracking past a partial match
	f("*abc", "ababc", true)
	f("*abc", "abab", false)
	f("gpt-*-mini", "gpt-4o-mini", true)
	f("gpt-*-mini", "gpt-4o-mini-x", false)
	f("gpt-*-mini", "gpt-4.1-mini-mini", true)

	// a star in the pattern is a wildcard even facing a literal star
	f("*", "*a", true)
	f("a*", "a*b", true)
	f("*b", "**b", true)

	// worst case must still be fast: no exponential backtracking
	f(strings.Repeat("a*", 30)+"b", strings.Repeat("a", 200), false)
}
