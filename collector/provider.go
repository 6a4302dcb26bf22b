package collector

import (
	"sort"
	"strings"

	"github.com/llmusage/llmusage/record"
)

// ProviderPrefix maps model names starting with Prefix to Provider.
type ProviderPrefix struct {
	// Prefix is compared with the lower-cased model name.
	Prefix string `yaml:"prefix"`
	// Provider is the provider those models belong to.
	Provider string `yaml:"provider"`
}

// DefaultProviderPrefixes is the built-in table for inferring a provider
// from a model name. Provider names follow the OpenTelemetry GenAI
// semantic conventions (gen_ai.provider.name). Model families served by
// many providers (llama, gemma, qwen) are deliberately absent: add them in
// the limits file for the provider you use, e.g. {prefix: llama-, provider: groq}.
var DefaultProviderPrefixes = []ProviderPrefix{
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

// providerAliases maps common spellings to the OpenTelemetry GenAI names.
var providerAliases = map[string]string{
	"azure":        "azure.ai.openai",
	"azure_openai": "azure.ai.openai",
	"azure-openai": "azure.ai.openai",
	"bedrock":      "aws.bedrock",
	"aws_bedrock":  "aws.bedrock",
	"gemini":       "gcp.gemini",
	"google":       "gcp.gemini",
	"vertex":       "gcp.vertex_ai",
	"vertex_ai":    "gcp.vertex_ai",
	"mistral":      "mistral_ai",
	"mistralai":    "mistral_ai",
	"xai":          "x_ai",
}

// ProviderTable infers providers from model names by longest prefix.
// It is immutable, so a reload swaps it whole.
type ProviderTable struct {
	// prefixes is sorted longest first, so the first match is the longest.
	prefixes []ProviderPrefix
}

// NewProviderTable returns the built-in table extended by extra; an extra
// entry with a built-in prefix replaces it.
func NewProviderTable(extra []ProviderPrefix) *ProviderTable {
	byPrefix := make(map[string]string)
	for _, p := range DefaultProviderPrefixes {
		byPrefix[p.Prefix] = p.Provider
	}
	for _, p := range extra {
		byPrefix[strings.ToLower(p.Prefix)] = NormalizeProvider(p.Provider)
	}
	t := &ProviderTable{}
	for prefix, provider := range byPrefix {
		t.prefixes = append(t.prefixes, ProviderPrefix{prefix, provider})
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

// Infer returns the provider of model, or record.UnknownProvider.
func (t *ProviderTable) Infer(model string) string {
	m := strings.ToLower(model)
	for _, p := range t.prefixes {
		if strings.HasPrefix(m, p.Prefix) {
			return p.Provider
		}
	}
	return record.UnknownProvider
}

// NormalizeProvider lower-cases a provider name and maps common aliases to
// the OpenTelemetry GenAI names.
func NormalizeProvider(p string) string {
	p = strings.ToLower(strings.TrimSpace(p))
	if alias, ok := providerAliases[p]; ok {
		return alias
	}
	return p
}
