package sidecartest

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// ConfigMapVolume is a directory laid out as kubelet's AtomicWriter lays
// out a ConfigMap volume holding one key: the content in a timestamped
// directory (..2026_12_08_10_00_01.000000001/<key>), ..data a symlink to
// that directory, and <key> a symlink through ..data. Update changes the
// content the way kubelet does, so that a test sees what a pod sees when
// its ConfigMap is edited.
type ConfigMapVolume struct {
	// Dir is the volume's directory, the mount path.
	Dir string
	// Path is Dir/<key>, the path a pod reads.
	Path string

	t       testing.TB
	key     string
	current string // the timestamped directory ..data points to
	n       int
}

// NewConfigMapVolume lays out a volume in a new t.TempDir() with key's
// content.
func NewConfigMapVolume(t testing.TB, key, content string) *ConfigMapVolume {
	t.Helper()
	dir := t.TempDir()
	v := &ConfigMapVolume{Dir: dir, Path: filepath.Join(dir, key), t: t, key: key}
	v.current = v.writeTimestamped(content)
	v.check(os.Symlink(v.current, filepath.Join(dir, "..data")))
	v.check(os.Symlink(filepath.Join("..data", key), v.Path))
	return v
}

// Update swaps content in as AtomicWriter does: a new timestamped
// directory, a new symlink ..data_tmp to it renamed over ..data (the one
// atomic step), then the old directory removed. Path itself is not
// touched.
func (v *ConfigMapVolume) Update(content string) {
	v.t.Helper()
	next := v.writeTimestamped(content)
	v.check(os.Symlink(next, filepath.Join(v.Dir, "..data_tmp")))
	v.check(os.Rename(filepath.Join(v.Dir, "..data_tmp"), filepath.Join(v.Dir, "..data")))
	v.check(os.RemoveAll(filepath.Join(v.Dir, v.current)))
	v.current = next
}

func (v *ConfigMapVolume) writeTimestamped(content string) string {
	v.t.Helper()
	v.n++
	name := fmt.Sprintf("..2026_12_08_10_00_%02d.%09d", v.n%60, v.n)
	v.check(os.Mkdir(filepath.Join(v.Dir, name), 0o755))
	v.check(os.WriteFile(filepath.Join(v.Dir, name, v.key), []byte(content), 0o644))
	return name
}

func (v *ConfigMapVolume) check(err error) {
	v.t.Helper()
	if err != nil {
		v.t.Fatal(err)
	}
}
