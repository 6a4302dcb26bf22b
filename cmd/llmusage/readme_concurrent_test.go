package main

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/llmusage/llmusage/internal/sidecartest"
)

// TestReadmeConcurrentExample runs docs/limits.md's "Calls in flight"
// section as a reader would: its limits file, then each curl command of
// its shell example against the sidecar, in order, comparing what each
// prints with the "# " lines shown under it ("…" stands for a part that
// varies, such as a time).
func TestReadmeConcurrentExample(t *testing.T) {
	section := readmeSection(t, "## Calls in flight")
	yamlStart := strings.Index(section, "```yaml\n") + len("```yaml\n")
	limits := section[yamlStart : yamlStart+strings.Index(section[yamlStart:], "```")]
	shStart := strings.Index(section, "```sh\n") + len("```sh\n")
	script := section[shStart : shStart+strings.Index(section[shStart:], "```")]
	s := sidecartest.Start(t, sidecartest.Options{Limits: limits})
	type step struct {
		command string
		shown   []string
	}
	var steps []step
	for _, line := range strings.Split(script, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "curl "):
			steps = append(steps, step{command: line})
		case strings.HasPrefix(line, "# ") && len(steps) > 0:
			steps[len(steps)-1].shown = append(steps[len(steps)-1].shown, strings.TrimPrefix(line, "# "))
		}
	}
	if len(steps) < 4 {
		t.Fatalf("the example has %d curl commands", len(steps))
	}
	for _, st := range steps {
		cmd := strings.ReplaceAll(st.command, "localhost:9470", strings.TrimPrefix(s.APIURL(), "http://"))
		out, err := exec.Command("sh", "-c", cmd).Output()
		if err != nil {
			t.Fatalf("%s: %v", st.command, err)
		}
		got := strings.TrimSpace(strings.ReplaceAll(string(out), "\r", ""))
		want := strings.Join(st.shown, "\n")
		if !shownMatches(want, got) {
			t.Fatalf("README shows for\n  %s\n%s\nthe sidecar answers:\n%s", st.command, want, got)
		}
	}
}

// readmeSection returns docs/limits.md's section that starts with heading,
// up to the next heading of its level or above.
func readmeSection(t *testing.T, heading string) string {
	t.Helper()
	readme, err := os.ReadFile("../../docs/limits.md")
	if err != nil {
		t.Fatal(err)
	}
	start := strings.Index(string(readme), heading)
	if start < 0 {
		t.Fatalf("README has no %q section", heading)
	}
	section := string(readme)[start+len(heading):]
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	return section
}

// shownMatches tells whether got is what the README shows, "…" matching
// any run of characters but a quote.
func shownMatches(shown, got string) bool {
	parts := strings.Split(shown, "…")
	for i := range parts {
		parts[i] = regexp.QuoteMeta(parts[i])
	}
	return regexp.MustCompile(`^` + strings.Join(parts, `[^"]*`) + `$`).MatchString(got)
}
