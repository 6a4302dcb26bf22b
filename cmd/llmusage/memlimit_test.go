package main

import "testing"

func TestParseBytes(t *testing.T) {
	f := func(in string, want int64, wantErr bool) {
		t.Helper()
		got, err := parseBytes(in)
		if (err != nil) != wantErr || got != want {
			t.Fatalf("parseBytes(%q) = %d, %v; want %d (error %v)", in, got, err, want, wantErr)
		}
	}
	f("1048576", 1<<20, false)
	f("256MiB", 256<<20, false)
	f("1GiB", 1<<30, false)
	f("512KiB", 512<<10, false)
	f("100MB", 100e6, false)
	f("0", 0, true)
	f("-5MiB", 0, true)
	f("lots", 0, true)
	f("12TiB", 0, true)
}
