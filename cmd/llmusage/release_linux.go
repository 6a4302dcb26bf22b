package main

import (
	"bufio"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// releaseStartupMemory gives back, once the sidecar serves, what only
// start-up used, so that an idle sidecar's resident memory is what it
// keeps using (docs/benchmarks.md, Footprint):
//
//   - the heap start-up left behind (the parsed flags, migrations,
//     limits file and price snapshot's garbage): the runtime would return
//     it to the OS only minutes later, a page at a time;
//   - the pages of the executable start-up ran or read (every package's
//     init, the migrations, the snapshot's parser): the kernel maps a
//     file's pages 64 KiB or more at a time and keeps them mapped for the
//     process's life. Only the read-only mappings are dropped (code,
//     read-only data): their pages stay in the page cache, and what the
//     sidecar runs later is mapped again by a minor fault. The writable
//     data mapping, whose pages may have been written, is left alone.
func releaseStartupMemory() {
	debug.FreeOSMemory()
	exe, err := os.Executable()
	if err != nil {
		return
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 00400000-011f4000 r-xp 00000000 fd:00 1234 /usr/local/bin/llmusage
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[5] != exe || !strings.HasPrefix(fields[1], "r") || strings.Contains(fields[1], "w") {
			continue
		}
		from, to, _ := strings.Cut(fields[0], "-")
		start, err1 := strconv.ParseUint(from, 16, 64)
		end, err2 := strconv.ParseUint(to, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		// Addresses from the kernel, not Go pointers: the raw syscall
		// rather than unix.Madvise's []byte.
		_, _, _ = syscall.Syscall(syscall.SYS_MADVISE, uintptr(start), uintptr(end-start), unix.MADV_DONTNEED)
	}
}
