package main

import (
	"debug/elf"
	"debug/gosym"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMakeBuildLinks builds the binary as `make build` does and checks
// that it links none of what made it a third larger (docs/benchmarks.md,
// Footprint): text/template's execution, which makes the linker keep every
// exported method of every type, and what brought it in (urfave/cli's
// help, gRPC's golang.org/x/net/trace).
func TestMakeBuildLinks(t *testing.T) {
	out := filepath.Join(t.TempDir(), "llmusage")
	cmd := exec.Command("make", "-s", "build", "BIN="+out, "VERSION=v0.0.0-test")
	cmd.Dir = "../.."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make build: %s\n%s", err, b)
	}
	checkLinks(t, out)
}

// unwanted are the functions, or the prefixes of the packages, that a
// build must not link (see TestMakeBuildLinks).
var unwanted = []string{
	"text/template.(*state).evalField",
	"html/template.",
	"golang.org/x/net/trace.",
	"github.com/urfave/cli/",
}

// checkLinks fails if the binary at path links a function of unwanted. It
// reads the function table (.gopclntab), which -s -w leave in place.
func checkLinks(t *testing.T, path string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pcln, text := f.Section(".gopclntab"), f.Section(".text")
	if pcln == nil || text == nil {
		t.Fatalf("%s has no .gopclntab or .text", path)
	}
	data, err := pcln.Data()
	if err != nil {
		t.Fatal(err)
	}
	table, err := gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
	if err != nil {
		t.Fatal(err)
	}
	if len(table.Funcs) < 1000 {
		t.Fatalf("only %d functions read from %s", len(table.Funcs), path)
	}
	for _, fn := range table.Funcs {
		for _, u := range unwanted {
			if strings.HasPrefix(fn.Name, u) {
				t.Errorf("%s links %s", path, fn.Name)
				break
			}
		}
	}
}
