// Package rules is the one place that knows what a limit rule is: the
// limits file, the rows of llm_rate_limit_configs and llm_rate_limits,
// which of them is in force where several share a scope, and reloading
// them (SIGHUP, the database's notifications or polling). The limiter
// enforces the rules it is handed and knows nothing of where they came from.
package rules

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"go.yaml.in/yaml/v3"

	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/pricing"
	"github.com/llmusage/llmusage/provider"
	"github.com/llmusage/llmusage/usd"
)

// File is the content of the limits file.
type File struct {
	// Name is the file's path, as given.
	Name string
	// Rules are the token-bucket rules, in file order.
	Rules []limiter.Rule
	// Providers extends the built-in model-prefix table.
	Providers []provider.Prefix
	// Prices override the embedded price table, in file order.
	Prices []pricing.Override
}

// fileRule is one entry of the file's limits list.
type fileRule struct {
	UserID    string `yaml:"user_id"`
	TeamID    string `yaml:"team_id"`
	Per       string `yaml:"per"`
	Provider  string `yaml:"provider"`
	Model     string `yaml:"model"`
	LimitType string `yaml:"limit_type"`
	Requests  *int64 `yaml:"requests"`
	Tokens    *int64 `yaml:"tokens"`
	// USD is a budget in dollars.
	USD *decimal `yaml:"usd"`
	// Concurrent is a concurrency limit: calls in flight at once, in
	// place of a limit_type and its amounts.
	Concurrent  *int64 `yaml:"concurrent"`
	Description string `yaml:"description"`
}

// decimal is a YAML scalar kept as its text, so that an amount such as
// 0.1 is read exactly rather than through a float.
type decimal string

func (d *decimal) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a number, got a %s", n.Line, kindName(n.Kind))
	}
	*d = decimal(n.Value)
	return nil
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.SequenceNode:
		return "list"
	case yaml.MappingNode:
		return "mapping"
	}
	return "YAML node"
}

type configFile struct {
	Providers []provider.Prefix `yaml:"providers"`
	Limits    []fileRule        `yaml:"limits"`
	Prices    []filePrice       `yaml:"prices"`
}

// LoadFile reads and validates a limits file.
func LoadFile(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read limits file: %w", err)
	}
	return ParseFile(path, data)
}

// ParseFile parses and validates a limits file's content; name prefixes
// messages, which carry the line of the offending entry.
func ParseFile(name string, data []byte) (*File, error) {
	if err := checkShape(name, data); err != nil {
		return nil, err
	}
	var f configFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("cannot parse %s", syntaxError(name, err))
	}
	// A second pass keeps each entry's node, for line numbers in messages.
	var lines struct {
		Providers []yaml.Node `yaml:"providers"`
		Limits    []yaml.Node `yaml:"limits"`
		Prices    []yaml.Node `yaml:"prices"`
	}
	_ = yaml.Unmarshal(data, &lines)

	cfg := &File{Name: name}
	for i, p := range f.Providers {
		at := fmt.Sprintf("%s:%d: providers[%d]", name, lineOf(lines.Providers, i), i)
		if p.Prefix == "" || p.Provider == "" {
			return nil, fmt.Errorf("cannot use %s: both prefix and provider are required", at)
		}
		cfg.Providers = append(cfg.Providers, p)
	}
	for i, fr := range f.Limits {
		at := fmt.Sprintf("%s:%d", name, lineOf(lines.Limits, i))
		if fr.Concurrent != nil {
			r, err := fr.concurrencyRule(at)
			if err != nil {
				return nil, fmt.Errorf("cannot use %s: limits[%d]: %w", at, i, err)
			}
			cfg.Rules = append(cfg.Rules, r)
			continue
		}
		if fr.LimitType == "" {
			return nil, fmt.Errorf("cannot use %s: limits[%d]: limit_type is required (second, minute, hour or day; day, week or month for usd)", at, i)
		}
		// A bad value is told at its key's line; the rule's source stays
		// the entry's line.
		keyAt := func(key string) string { return fmt.Sprintf("%s:%d", name, keyLine(lines.Limits, i, key)) }
		w, err := limiter.ParseWindow(fr.LimitType)
		if err != nil {
			return nil, fmt.Errorf("cannot use %s: limits[%d]: %w", keyAt("limit_type"), i, err)
		}
		if fr.Requests == nil && fr.Tokens == nil && fr.USD == nil {
			return nil, fmt.Errorf("cannot use %s: limits[%d]: set requests, tokens, usd or several", at, i)
		}
		per, err := limiter.ParsePer(fr.Per)
		if err != nil {
			return nil, fmt.Errorf("cannot use %s: limits[%d]: %w", keyAt("per"), i, err)
		}
		if fr.USD != nil {
			budget, err := usd.Parse(string(*fr.USD))
			if err != nil {
				return nil, fmt.Errorf("cannot use %s: limits[%d]: usd must be an amount of dollars such as 50 or 0.01, got %q", keyAt("usd"), i, *fr.USD)
			}
			r := limiter.Rule{
				UserID: fr.UserID, TeamID: fr.TeamID, Per: per, Provider: provider.Normalize(fr.Provider), Model: fr.Model,
				Window: w, Unit: limiter.USD, Limit: int64(budget), Source: at,
			}
			if err := r.Validate(); err != nil {
				return nil, fmt.Errorf("cannot use %s: limits[%d]: %w", at, i, err)
			}
			cfg.Rules = append(cfg.Rules, r)
		}
		for _, u := range []struct {
			unit  limiter.Unit
			value *int64
		}{{limiter.Requests, fr.Requests}, {limiter.Tokens, fr.Tokens}} {
			if u.value == nil {
				continue
			}
			r := limiter.Rule{
				UserID: fr.UserID, TeamID: fr.TeamID, Per: per, Provider: provider.Normalize(fr.Provider), Model: fr.Model,
				Window: w, Unit: u.unit, Limit: *u.value, Source: at,
			}
			if err := r.Validate(); err != nil {
				return nil, fmt.Errorf("cannot use %s: limits[%d]: %w", at, i, err)
			}
			cfg.Rules = append(cfg.Rules, r)
		}
	}
	for i, fp := range f.Prices {
		o, err := fp.override(fmt.Sprintf("%s:%d: prices[%d]", name, lineOf(lines.Prices, i), i))
		if err != nil {
			return nil, err
		}
		cfg.Prices = append(cfg.Prices, o)
	}
	// Catch conflicting rules (same scope twice) now, with their lines.
	if _, err := limiter.New(cfg.Rules, limiter.Options{}); err != nil {
		return nil, fmt.Errorf("cannot use %s: %w", name, err)
	}
	return cfg, nil
}

// concurrencyRule is the rule of an entry with concurrent: N, which
// counts calls in flight rather than calls in a window.
func (fr fileRule) concurrencyRule(at string) (limiter.Rule, error) {
	if fr.LimitType != "" || fr.Requests != nil || fr.Tokens != nil || fr.USD != nil {
		return limiter.Rule{}, errors.New("concurrent counts the calls in flight, not a window: drop limit_type, requests, tokens and usd here, and give them an entry of their own")
	}
	per, err := limiter.ParsePer(fr.Per)
	if err != nil {
		return limiter.Rule{}, err
	}
	r := limiter.Rule{UserID: fr.UserID, TeamID: fr.TeamID, Per: per, Provider: provider.Normalize(fr.Provider), Model: fr.Model,
		Window: limiter.InFlight, Unit: limiter.Concurrent, Limit: *fr.Concurrent, Source: at}
	return r, r.Validate()
}

// keyLine is the line of key's value in the mapping nodes[i], or the
// entry's line when it has no such key.
func keyLine(nodes []yaml.Node, i int, key string) int {
	if i < len(nodes) && nodes[i].Kind == yaml.MappingNode {
		m := nodes[i].Content
		for j := 0; j+1 < len(m); j += 2 {
			if m[j].Value == key {
				return m[j+1].Line
			}
		}
	}
	return lineOf(nodes, i)
}

func lineOf(nodes []yaml.Node, i int) int {
	if i < len(nodes) {
		return nodes[i].Line
	}
	return 0
}
