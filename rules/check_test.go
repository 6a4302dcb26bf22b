package rules

import (
	"strings"
	"testing"
)

// TestParseFileShapeErrors: every way the file's YAML can disagree with
// its schema is told with the line, the key and what was wanted, in the
// file's words; never with a Go type, as yaml's own errors would.
func TestParseFileShapeErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want string
	}{
		{"unknown top-level key", "limit:\n  - limit_type: minute\n",
			`cannot parse limits.yaml:1: unknown field "limit"; did you mean "limits"?`},
		{"unknown key in a rule", "limits:\n  - limit_type: minute\n    request: 3\n",
			`cannot parse limits.yaml:3: limits[0]: unknown field "request"; did you mean "requests"?`},
		{"unknown key, nothing near", "limits:\n  - limit_type: minute\n    colour: red\n",
			`cannot parse limits.yaml:3: limits[0]: unknown field "colour"; want user_id, team_id, per, provider, model, limit_type, requests, tokens, usd, concurrent, description`},
		{"unknown key in a later rule", "limits:\n  - limit_type: minute\n    requests: 3\n  - limit_type: day\n    tokns: 5\n",
			`cannot parse limits.yaml:5: limits[1]: unknown field "tokns"; did you mean "tokens"?`},
		{"unknown key in providers", "providers:\n  - prefix: llama-\n    provder: groq\n",
			`cannot parse limits.yaml:3: providers[0]: unknown field "provder"; did you mean "provider"?`},
		{"unknown key in prices", "prices:\n  - model: m\n    input: 1\n    ouput: 1\n",
			`cannot parse limits.yaml:4: prices[0]: unknown field "ouput"; did you mean "output"?`},
		{"word for a number", "limits:\n  - limit_type: day\n    requests: lots\n",
			`cannot parse limits.yaml:3: limits[0]: "requests" must be a whole number, not "lots"`},
		{"fraction for a whole number", "limits:\n  - limit_type: day\n    tokens: 1.5\n",
			`cannot parse limits.yaml:3: limits[0]: "tokens" must be a whole number, not "1.5"`},
		{"quoted number", "limits:\n  - concurrent: \"3\"\n",
			`cannot parse limits.yaml:2: limits[0]: "concurrent" must be a whole number, not "3"`},
		{"number too large", "limits:\n  - limit_type: day\n    requests: 18446744073709551615\n",
			`cannot parse limits.yaml:3: limits[0]: "requests" is too large: 18446744073709551615`},
		{"list for a number", "limits:\n  - limit_type: day\n    requests: [1]\n",
			`cannot parse limits.yaml:3: limits[0]: "requests" must be a whole number, not a list`},
		{"list for an amount", "limits:\n  - limit_type: month\n    usd: [1]\n",
			`cannot parse limits.yaml:3: limits[0]: "usd" must be a number, not a list`},
		{"mapping for a price", "prices:\n  - model: m\n    input: {a: 1}\n    output: 1\n",
			`cannot parse limits.yaml:3: prices[0]: "input" must be a number, not a mapping`},
		{"list for text", "limits:\n  - limit_type: day\n    model: [a, b]\n    requests: 1\n",
			`cannot parse limits.yaml:3: limits[0]: "model" must be text, not a list`},
		{"mapping for a list", "limits:\n  limit_type: day\n  requests: 1\n",
			`cannot parse limits.yaml:2: "limits" must be a list, not a mapping`},
		{"text for a list", "prices: none\n",
			`cannot parse limits.yaml:1: "prices" must be a list, not "none"`},
		{"text for a rule", "limits:\n  - minute\n",
			`cannot parse limits.yaml:2: limits[0]: want a mapping of user_id, team_id, per`},
		{"text for the file", "just some text\n",
			`cannot parse limits.yaml:1: want a mapping of providers, limits and prices, not "just some text"`},
		{"list for the file", "- limit_type: day\n",
			`cannot parse limits.yaml:1: want a mapping of providers, limits and prices, not a list`},
		{"syntax error", "limits: [\n",
			`cannot parse limits.yaml:`},
		{"tab indentation", "limits:\n\t- limit_type: day\n",
			`cannot parse limits.yaml:2: found character that cannot start any token`},
		{"key given twice", "limits:\n  - limit_type: day\n    requests: 1\n    requests: 2\n",
			`cannot parse limits.yaml:4: mapping key "requests" already defined at line 3`},
		{"alias to a wrong kind", "x: &a [1]\n",
			`cannot parse limits.yaml:1: unknown field "x"`},
		{"alias of a bad value", "limits:\n  - limit_type: day\n    requests: &n many\n  - limit_type: hour\n    requests: *n\n",
			`cannot parse limits.yaml:3: limits[0]: "requests" must be a whole number, not "many"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseFile("limits.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("no error for:\n%s", tc.yaml)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q\ndoes not contain %q", msg, tc.want)
			}
			for _, goWord := range []string{"rules.", "int64", "unmarshal", "!!", "not found in type", " yaml: "} {
				if strings.Contains(msg, goWord) {
					t.Fatalf("error %q names %q, a word of Go or of yaml's decoder", msg, goWord)
				}
			}
		})
	}
}

// TestParseFileShapeAccepts: what yaml decodes well passes the check:
// nulls, anchors, numbers written in YAML's other notations, numbers for
// text.
func TestParseFileShapeAccepts(t *testing.T) {
	for _, y := range []string{
		"",
		"# nothing yet\n",
		"limits:\n",
		"limits: []\nproviders: ~\n",
		"limits:\n  - limit_type: day\n    requests: 1_000\n    model: 4\n    description:\n",
		"limits:\n  - limit_type: day\n    requests: 0x10\n",
		"base: &b\nlimits:\n  - limit_type: day\n    requests: &n 5\n  - limit_type: hour\n    requests: *n\n"[len("base: &b\n"):],
		"prices:\n  - model: m\n    input: 2.5\n    output: 10\n    from: 2026-01-01\n",
	} {
		if _, err := ParseFile("limits.yaml", []byte(y)); err != nil {
			t.Errorf("%q: %v", y, err)
		}
	}
}
