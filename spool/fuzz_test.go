package spool

import (
	"reflect"
	"testing"
)

// FuzzDecodePayload: a damaged payload is an error, never a panic, and a
// valid one round-trips.
func FuzzDecodePayload(f *testing.F) {
	r := rec(1)
	f.Add(appendFrame(nil, &r)[frameHeader:])
	f.Add([]byte{codecVersion, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, payload []byte) {
		got, err := decodePayload(payload)
		if err != nil {
			return
		}
		again, err := decodePayload(appendFrame(nil, &got)[frameHeader:])
		if err != nil || !reflect.DeepEqual(again, got) {
			t.Fatalf("round trip of %+v: %+v, %v", got, again, err)
		}
	})
}
