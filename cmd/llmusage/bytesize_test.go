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
	f(" 2MiB ", 2<<20, false)
	f("9223372036854775807GiB", 0, true) // overflows int64
}

func TestByteSizeString(t *testing.T) {
	f := func(n int64, want string) {
		t.Helper()
		b := byteSize(n)
		if got := b.String(); got != want {
			t.Fatalf("byteSize(%d).String() = %q, want %q", n, got, want)
		}
		var back byteSize
		if err := back.Set(want); err != nil || back != b {
			t.Fatalf("Set(%q) = %d, %v; want %d", want, back, err, n)
		}
	}
	f(1<<20, "1MiB")
	f(1<<30, "1GiB")
	f(3<<10, "3KiB")
	f(1000, "1000")
	f(1<<20+1, "1048577")
}
