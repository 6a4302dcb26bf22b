package dashboards

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"
)

// TestRulesWithPromtool checks the rules file and runs its unit tests
// (rules/llmusage.rules_test.yaml) with promtool, which make test
// installs: a missing promtool fails the test rather than skipping it, so
// that the alerts are never left untested unnoticed.
func TestRulesWithPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is not installed: run make test (Debian package prometheus)")
	}
	f := func(args ...string) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), promtool, args...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %s\n%s", strings.Join(args, " "), err, out)
		}
	}
	f("check", "rules", "rules/llmusage.rules.yaml")
	f("test", "rules", "rules/llmusage.rules_test.yaml")
}

// TestAlertsHaveRunbooks checks that every alert has a for duration, a
// known severity, a summary, a description and a runbook_url pointing
// at its own section of docs/runbook.md, and that the section exists
// (the anchor GitHub gives its heading).
func TestAlertsHaveRunbooks(t *testing.T) {
	const runbookURL = "https://github.com/llmusage/llmusage/blob/main/docs/runbook.md#"

	// anchor is GitHub's anchor for a Markdown heading: lower-cased,
	// punctuation other than hyphens, spaces and underscores dropped,
	// spaces turned into hyphens.
	anchor := func(heading string) string {
		var b strings.Builder
		for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
			switch {
			case r == ' ':
				b.WriteByte('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r) || unicode.Is(unicode.Mn, r):
				b.WriteRune(r)
			}
		}
		return b.String()
	}
	t.Run("anchor", func(t *testing.T) {
		f := func(heading, want string) {
			t.Helper()
			if got := anchor(heading); got != want {
				t.Fatalf("anchor(%q) = %q, want %q", heading, got, want)
			}
		}
		f("LLMUsageQuotaNearlyExhausted", "llmusagequotanearlyexhausted")
		f("  LLMUsageStoreDown ", "llmusagestoredown")
		f("How to confirm", "how-to-confirm")
		f("What to do?", "what-to-do")
		f("`up{job=\"llmusage\"} == 0`", "upjobllmusage--0")
		f("Set-up on a fresh machine", "set-up-on-a-fresh-machine")
		f("user_limit_type_unit: ratio", "user_limit_type_unit-ratio")
		f("Réinitialiser (v2.1)", "réinitialiser-v21")
	})

	// The anchors of docs/runbook.md's headings, outside fenced code
	// blocks (whose "# comment" lines are no headings). A repeated
	// heading gets -1, -2, ... as on GitHub.
	runbook, err := os.ReadFile("../docs/runbook.md")
	if err != nil {
		t.Fatalf("cannot read the runbook: %s", err)
	}
	anchors := map[string]bool{}
	seen := map[string]int{}
	fenced := false
	sc := bufio.NewScanner(bytes.NewReader(runbook))
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimLeft(line, " ")
		if strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~") {
			fenced = !fenced
			continue
		}
		if fenced || len(line)-len(trimmed) > 3 {
			continue
		}
		level := len(trimmed) - len(strings.TrimLeft(trimmed, "#"))
		if level < 1 || level > 6 || (len(trimmed) > level && trimmed[level] != ' ') {
			continue
		}
		text := strings.TrimRight(strings.TrimSpace(trimmed[level:]), "#")
		a := anchor(text)
		n := seen[a]
		seen[a]++
		if n > 0 {
			a += "-" + strconv.Itoa(n)
		}
		anchors[a] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}

	raw, err := os.ReadFile("rules/llmusage.rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	type alertRule struct {
		Alert       string            `yaml:"alert"`
		For         string            `yaml:"for"`
		Labels      map[string]string `yaml:"labels"`
		Annotations map[string]string `yaml:"annotations"`
	}
	var file struct {
		Groups []struct {
			Rules []alertRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &file); err != nil {
		t.Fatalf("rules/llmusage.rules.yaml: %s", err)
	}

	names := map[string]bool{}
	f := func(r alertRule) {
		t.Helper()
		if names[r.Alert] {
			t.Errorf("alert %s is defined twice", r.Alert)
		}
		names[r.Alert] = true
		if r.For == "" {
			t.Errorf("alert %s has no for: it would fire on a single evaluation", r.Alert)
		} else if d, err := model.ParseDuration(r.For); err != nil || d <= 0 {
			t.Errorf("alert %s: for %q is not a positive duration", r.Alert, r.For)
		}
		switch s := r.Labels["severity"]; s {
		case "critical", "warning", "info":
		default:
			t.Errorf("alert %s: severity %q, want critical, warning or info", r.Alert, s)
		}
		for _, a := range []string{"summary", "description", "runbook_url"} {
			if strings.TrimSpace(r.Annotations[a]) == "" {
				t.Errorf("alert %s has no %s annotation", r.Alert, a)
			}
		}
		u := r.Annotations["runbook_url"]
		if u == "" {
			return
		}
		a, ok := strings.CutPrefix(u, runbookURL)
		if !ok || a == "" || strings.ContainsAny(a, "#/?") {
			t.Errorf("alert %s: runbook_url %q does not have the form %s<anchor>", r.Alert, u, runbookURL)
			return
		}
		if !anchors[a] {
			t.Errorf("alert %s: runbook_url %q: docs/runbook.md has no heading with the anchor #%s (add a section \"## %s\")", r.Alert, u, a, r.Alert)
		}
		if want := anchor(r.Alert); a != want {
			t.Errorf("alert %s: runbook_url links #%s, want its own section #%s", r.Alert, a, want)
		}
	}
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				f(r)
			}
		}
	}
	if len(names) == 0 {
		t.Fatal("no alert found in rules/llmusage.rules.yaml")
	}
}
