package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDockerfileBuild runs the build command of the Dockerfile (no Docker
// engine is needed) and checks that it yields a static binary that runs:
// the distroless image has no libc, so a dynamically linked binary would
// not start there; and that it links nothing that TestMakeBuildLinks
// keeps out.
func TestDockerfileBuild(t *testing.T) {
	raw, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	var build string
	for i, line := range lines {
		if strings.TrimSpace(line) == "# build:" && i+1 < len(lines) {
			build = strings.TrimPrefix(strings.TrimSpace(lines[i+1]), "RUN ")
		}
	}
	if !strings.HasPrefix(build, "CGO_ENABLED=0 go build ") || !strings.Contains(build, "-o /out/llmusage ./cmd/llmusage") {
		t.Fatalf("no static build command after '# build:' in the Dockerfile: %q", build)
	}
	out := filepath.Join(t.TempDir(), "llmusage")
	build = strings.NewReplacer("${VERSION}", "v0.0.0-test", "/out/llmusage", out).Replace(build)
	cmd := exec.Command("sh", "-c", build)
	cmd.Dir = "../.."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %s\n%s", build, err, b)
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("the Dockerfile's build yields a dynamically linked binary; the distroless static image cannot run it")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Fatalf("the binary needs shared libraries: %v", libs)
	}
	got, err := exec.Command(out, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(got), "llmusage v0.0.0-test ") {
		t.Fatalf("llmusage version: %s %v", got, err)
	}
	checkLinks(t, out)
}
