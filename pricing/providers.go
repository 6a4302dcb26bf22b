package pricing

// genaiProviders maps llmusage provider names (the OpenTelemetry GenAI
// names that provider.Normalize returns) to genai-prices provider ids. A
// provider not listed here, record.UnknownProvider included, has no
// embedded prices: llmusage does not guess. Every id must be dumped by
// refresh/dump.mjs (a test checks it).
var genaiProviders = map[string]string{
	"openai":             "openai",
	"anthropic":          "anthropic",
	"groq":               "groq",
	"gcp.gemini":         "google",
	"gcp.vertex_ai":      "google",
	"gcp.gen_ai":         "google",
	"mistral_ai":         "mistral",
	"deepseek":           "deepseek",
	"x_ai":               "x-ai",
	"cohere":             "cohere",
	"aws.bedrock":        "aws",
	"azure.ai.openai":    "azure",
	"azure.ai.inference": "azure",
	"perplexity":         "perplexity",
	"together":           "together",
	"fireworks":          "fireworks",
	"openrouter":         "openrouter",
}
