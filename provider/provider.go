// Package provider is the one place that knows provider names: the
// aliases that map common spellings to the OpenTelemetry GenAI names, and
// the model-prefix table that infers a provider from a model name. Intake,
// limit rules and the stores all normalise through it, so that "Azure",
// " azure " and "azure.ai.openai" are one provider everywhere.
package provider

import (
	"sort"
	"strings"

	"github.com/llmusage/llmusage/record"
)

// Prefix maps model names starting with Prefix to Provider.
type Prefix struct {
	// Prefix is compared with the lower-cased model name.
	Prefix string `yaml:"prefix"`
	// Provider is the provider those models belong to.
	Provider string `yaml:"provider"`
}

// Defaults is the built-in table for inferring a provider
// from a model name. Provider names follow the OpenTelemetry GenAI
// semantic conventions (gen_ai.provider.name). Model families served by
// many providers (llama, gemma, qwen) are deliberately absent: add them in
// the limits file for the provider you use, e.g. {prefix: llama-, provider: groq}.
var Defaults = []Prefix{
	{"gpt-", "openai"}, {"chatgpt-", "openai"}, {"o1", "openai"}, {"o3", "openai"}, {"o4", "openai"},
	{"text-embedding-", "openai"}, {"dall-e", "openai"}, {"whisper-", "openai"}, {"tts-", "openai"},
	{"omni-moderation", "openai"}, {"text-moderation", "openai"}, {"davinci", "openai"}, {"babbage", "openai"},
	{"claude-", "anthropic"},
	{"gemini-", "gcp.gemini"},
	{"mistral-", "mistral_ai"}, {"mixtral-", "mistral_ai"}, {"codestral-", "mistral_ai"}, {"ministral-", "mistral_ai"},
	{"pixtral-", "mistral_ai"}, {"magistral-", "mistral_ai"}, {"open-mistral-", "mistral_ai"}, {"open-mixtral-", "mistral_ai"},
	{"command-", "cohere"},
	{"deepseek-", "deepseek"},
	{"grok-", "x_ai"},
	{"sonar", "perplexity"},
}

// aliases maps common spellings to the OpenTelemetry GenAI names.
var aliases = map[string]string{
	"azure":        "azure.ai.openai",
	"azure_openai": "azure.ai.openai",
	"azure-openai": "azure.ai.openai",
	// gen_ai.system's values before semantic conventions 1.37 renamed them.
	"az.ai.openai":    "azure.ai.openai",
	"az.ai.inference": "azure.ai.inference",
	"bedrock":         "aws.bedrock",
	"aws_bedrock":     "aws.bedrock",
	"gemini":          "gcp.gemini",
	"google":          "gcp.gemini",
	"vertex":          "gcp.vertex_ai",
	"vertex_ai":       "gcp.vertex_ai",
	"mistral":         "mistral_ai",
	"mistralai":       "mistral_ai",
	"xai":             "x_ai",
}

// Table infers providers from model names by longest prefix.
// It is immutable, so a reload swaps it whole.
type Table struct {
	// prefixes is sorted longest first, so the first match is the longest.
	prefixes []Prefix
}

// NewTable returns the built-in table extended by extra; an extra
// entry with a built-in prefix replaces it.
func NewTable(extra []Prefix) *Table {
	byPrefix := make(map[string]string)
	for _, p := range Defaults {
		byPrefix[p.Prefix] = p.Provider
	}
	for _, p := range extra {
		byPrefix[strings.ToLower(p.Prefix)] = Normalize(p.Provider)
	}
	t := &Table{}
	for prefix, provider := range byPrefix {
		t.prefixes = append(t.prefixes, Prefix{prefix, provider})
	}
	sort.Slice(t.prefixes, func(i, j int) bool {
		a, b := t.prefixes[i].Prefix, t.prefixes[j].Prefix
		if len(a) != len(b) {
			return len(a) > len(b)
		}
		return a < b
	})
	return t
}

// Prefixes returns the table, longest prefix first.
func (t *Table) Prefixes() []Prefix { return append([]Prefix(nil), t.prefixes...) }

// Infer returns the provider of model, or record.UnknownProvider.
func (t *Table) Infer(model string) string {
	m := strings.ToLower(model)
	for _, p := range t.prefixes {
		if strings.HasPrefix(m, p.Prefix) {
			return p.Provider
		}
	}
	return record.UnknownProvider
}

// Normalize lower-cases a provider name and maps common aliases to
// the OpenTelemetry GenAI names.
func Normalize(p string) string {
	p = strings.ToLower(strings.TrimSpace(p))
	if alias, ok := aliases[p]; ok {
		return alias
	}
	return p
}
