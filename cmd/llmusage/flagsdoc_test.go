package main

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmusage/llmusage/internal/cli"
	"github.com/llmusage/llmusage/internal/sidecartest"
)

// updateFlagsDoc rewrites docs/flags.md instead of comparing it
// (go generate ./cmd/llmusage).
var updateFlagsDoc = flag.Bool("update-flags-doc", false, "rewrite docs/flags.md from the flags")

const flagsDocPath = "../../docs/flags.md"

// TestFlagsDoc: docs/flags.md is what the flags say now.
func TestFlagsDoc(t *testing.T) {
	want := flagsMarkdown(newApp())
	if *updateFlagsDoc {
		if err := os.WriteFile(flagsDocPath, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	got, err := os.ReadFile(flagsDocPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatal("docs/flags.md is not what the flags say: run go generate ./cmd/llmusage")
	}
	// Every flag of every command is there, with its details.
	for _, cmd := range newApp().Commands {
		for _, f := range cmd.Flags {
			if !strings.Contains(want, "| `--"+f.Names()[0]+"` |") {
				t.Errorf("docs/flags.md lacks %s --%s", cmd.Name, f.Names()[0])
			}
		}
		for name := range flagDetails()[cmd.Name] {
			if !hasFlag(cmd.Flags, name) {
				t.Errorf("flagDetails has %s --%s, which %s does not take", cmd.Name, name, cmd.Name)
			}
		}
	}
}

func hasFlag(flags []cli.Flag, name string) bool {
	for _, f := range flags {
		if f.Names()[0] == name {
			return true
		}
	}
	return false
}

// TestServeHelp: serve --help groups its flags by category, one short
// line each, through the built binary.
func TestServeHelp(t *testing.T) {
	bin := sidecartest.Binary(t)
	out, err := exec.Command(bin, "serve", "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("serve --help: %v\n%s", err, out)
	}
	for _, cat := range []string{catAPI, catLimits, catStorage, catRedis, catProxy, catOTLP, catMetrics, catOps} {
		if !strings.Contains(string(out), "\n   "+cat+":\n") {
			t.Errorf("serve --help has no %q category:\n%s", cat, out)
		}
	}
	for _, line := range strings.Split(string(out), "\n") {
		if len(line) > 150 {
			t.Errorf("a line of %d characters: %s", len(line), line)
		}
	}
}

// TestUnknownFlagSuggestion: a misspelt flag is answered with the one it
// is nearest, for the commands' flags, through the built binary.
func TestUnknownFlagSuggestion(t *testing.T) {
	bin := sidecartest.Binary(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--databse-url", "x"}, "llmusage: cannot parse the command line: flag provided but not defined: --databse-url; did you mean --database-url? (see --help)\n"},
		{[]string{"serve", "--redis-fail-mod=open"}, "did you mean --redis-fail-mode?"},
		{[]string{"migrate", "--statsu"}, "did you mean --status?"},
		{[]string{"inject", "--tls-cert=x"}, "flag provided but not defined: --tls-cert (see --help)"},
		{[]string{"serve", "--colour"}, "flag provided but not defined: --colour (see --help)"},
	} {
		cmd := exec.Command(bin, tc.args...)
		out, err := cmd.CombinedOutput()
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 {
			t.Errorf("%v: %v, want exit status 1", tc.args, err)
		}
		if !strings.Contains(string(out), tc.want) || strings.Count(string(out), "\n") != 1 {
			t.Errorf("%v: %q, want one line with %q", tc.args, out, tc.want)
		}
	}
}

// TestLimitsFileTypo: serve refuses a misspelt key of the limits file
// with its line and the key meant, in one line.
func TestLimitsFileTypo(t *testing.T) {
	bin := sidecartest.Binary(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "limits.yaml")
	if err := os.WriteFile(file, []byte("limits:\n  - limit_type: minute\n    request: 30\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(bin, "serve", "--limits-file", file, "--data-dir", dir).CombinedOutput()
	want := "llmusage: cannot parse " + file + `:3: limits[0]: unknown field "request"; did you mean "requests"?` + "\n"
	if string(out) != want {
		t.Fatalf("serve said %q, want %q", out, want)
	}
}
