//go:build !linux

package main

import "runtime/debug"

// releaseStartupMemory gives back the heap start-up left behind; see
// release_linux.go for the executable's pages, which only Linux drops.
func releaseStartupMemory() { debug.FreeOSMemory() }
