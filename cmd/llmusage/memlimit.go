package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// startupTail is how long after the sidecar starts serving its start-up
// memory is released (releaseStartupMemory).
const startupTail = 10 * time.Second

// applyMemoryLimit sets the Go runtime's soft memory limit, so that the
// garbage collector works harder before the container's limit is hit
// (under a flood of new users the live heap follows the users active in
// the last refill period, and the default GOGC would let the heap double
// on top of that). GOMEMLIMIT, when set, wins. spec is "auto" (90% of the
// cgroup's memory limit, if there is one), "0" (no limit) or a size such
// as 256MiB.
func applyMemoryLimit(spec string, logger *slog.Logger) error {
	if v := os.Getenv("GOMEMLIMIT"); v != "" {
		logger.Info("memory limit from GOMEMLIMIT", "limit", v)
		return nil
	}
	var limit int64
	switch spec {
	case "0", "none", "":
		return nil
	case "auto":
		cg, ok := cgroupMemoryLimit()
		if !ok {
			return nil
		}
		limit = cg / 10 * 9
	default:
		n, err := parseBytes(spec)
		if err != nil {
			return fmt.Errorf("cannot use --memory-limit %q: %w", spec, err)
		}
		limit = n
	}
	debug.SetMemoryLimit(limit)
	logger.Info("memory limit set", "bytes", limit)
	return nil
}

// cgroupMemoryLimit reads the container's memory limit (cgroup v2, then v1).
func cgroupMemoryLimit() (int64, bool) {
	for _, path := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		// "max", or v1's near-2^63 "unlimited", mean no limit.
		if err != nil || n <= 0 || n >= 1<<60 {
			return 0, false
		}
		return n, true
	}
	return 0, false
}
