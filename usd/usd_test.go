package usd

import "testing"

func TestParse(t *testing.T) {
	f := func(s string, want Amount) {
		t.Helper()
		got, err := Parse(s)
		if err != nil {
			t.Fatalf("Parse(%q): %v", s, err)
		}
		if got != want {
			t.Fatalf("Parse(%q) = %d, want %d", s, got, want)
		}
		if back, err := Parse(got.String()); err != nil || back != got {
			t.Fatalf("Parse(%q.String() = %q) = %d, %v", s, got.String(), back, err)
		}
	}
	f("0", 0)
	f("50", 50*Dollar)
	f("0.01", 10_000_000)
	f("0.000000001", 1)
	f("0.0000000004", 0)
	f("0.0000000005", 1)
	f("0.00000000149", 1)
	f("1.5e-3", 1_500_000)
	f("2E2", 200*Dollar)
	f(".5", Dollar/2)
	f("5.", 5*Dollar)
	f("000.120", 120_000_000)
	f("1000000000", Max)

	bad := func(s string) {
		t.Helper()
		if v, err := Parse(s); err == nil {
			t.Fatalf("Parse(%q) = %d, want an error", s, v)
		}
	}
	bad("")
	bad("-1")
	bad("abc")
	bad("1.2.3")
	bad(".")
	bad("1e")
	bad("1000000000.000000001")
	bad("1e30")
	bad("99999999999999999999")
	bad("NaN")
}

func TestString(t *testing.T) {
	f := func(a Amount, want string) {
		t.Helper()
		if got := a.String(); got != want {
			t.Fatalf("%d.String() = %q, want %q", int64(a), got, want)
		}
	}
	f(0, "0")
	f(1, "0.000000001")
	f(Dollar, "1")
	f(1_230_000, "0.00123")
	f(-Dollar/10, "-0.1")
}
