package provider

import "testing"

func TestInfer(t *testing.T) {
	table := NewTable([]Prefix{{Prefix: "gpt-4o-mini-ft", Provider: "Azure"}, {Prefix: "Llama-", Provider: " Groq "}})
	f := func(model, want string) {
		t.Helper()
		if got := table.Infer(model); got != want {
			t.Fatalf("Infer(%q) = %q, want %q", model, got, want)
		}
	}
	f("gpt-4", "openai")
	f("GPT-4o", "openai")
	f("o1-preview", "openai")
	f("o3", "openai")
	f("claude-3-opus-20240229", "anthropic")
	f("gemini-1.5-pro", "gcp.gemini")
	f("mistral-large-latest", "mistral_ai")
	f("grok-2", "x_ai")
	f("deepseek-chat", "deepseek")
	f("gpt-4o-mini-ft-2024", "azure.ai.openai") // the longest prefix wins, its provider normalised
	f("llama-3.1-70b-versatile", "groq")
	f("gemma-7b", "unknown")
	f("", "unknown")
}

func TestNormalize(t *testing.T) {
	f := func(in, want string) {
		t.Helper()
		if got := Normalize(in); got != want {
			t.Fatalf("Normalize(%q) = %q, want %q", in, got, want)
		}
	}
	// One provider, however it is spelled.
	f("Azure", "azure.ai.openai")
	f("azure", "azure.ai.openai")
	f(" azure ", "azure.ai.openai")
	f("\tAZURE\n", "azure.ai.openai")
	f("azure.ai.openai", "azure.ai.openai")
	f("Azure.AI.OpenAI", "azure.ai.openai")
	f("bedrock", "aws.bedrock")
	f("Gemini", "gcp.gemini")
	f("mistral", "mistral_ai")
	f("xai", "x_ai")
	f("OpenAI", "openai")
	f("groq", "groq")
	// gen_ai.system's older values.
	f("az.ai.openai", "azure.ai.openai")
	f("az.ai.inference", "azure.ai.inference")
	f("", "")
	f("  ", "")
}
