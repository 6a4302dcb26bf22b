package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lockDir takes an exclusive lock on dir's LOCK file for as long as the
// returned file stays open. Two sidecars appending to one spool would
// each write the same segment at their own offsets, overwriting records
// the other had acknowledged: the second must refuse to start instead.
// The lock is the kernel's (flock), so a killed sidecar's is released
// with its process and never needs clearing by hand.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "LOCK")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("cannot open the spool's lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("cannot use the spool in %s: another llmusage%s holds it; give each sidecar its own --data-dir", dir, holder(path))
		}
		return nil, fmt.Errorf("cannot lock the spool in %s: %w", dir, err)
	}
	// The holder's pid, for the next one's error message only.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// holder names the process that wrote the lock file, if it says.
func holder(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	pid := strings.TrimSpace(string(b))
	if _, err := strconv.Atoi(pid); err != nil {
		return ""
	}
	return " (pid " + pid + ")"
}
