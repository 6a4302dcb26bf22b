package collector

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzScanObject checks the member scanner against encoding/json: for any
// valid JSON object, the same names with the same values (the last of a
// repeated name winning, as with encoding/json).
func FuzzScanObject(f *testing.F) {
	f.Add([]byte(`{"a":1,"b":"x\"y","c":{"d":[1,{"e":"}"}]},"a":null, "f" : true }`))
	f.Add([]byte(`{"\u0075ser_id":"u","model":"m"}`))
	f.Add([]byte(`[1,2]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if !json.Valid(b) {
			return
		}
		var want map[string]json.RawMessage
		isObject := json.Unmarshal(b, &want) == nil && want != nil
		fields, ok := scanObject(b, nil)
		if ok != isObject {
			t.Fatalf("scanObject(%q) ok=%v, encoding/json says object=%v", b, ok, isObject)
		}
		if !ok {
			return
		}
		got := map[string]json.RawMessage{}
		for _, fl := range fields {
			got[string(fl.name)] = fl.raw
		}
		if len(got) != len(want) {
			t.Fatalf("scanObject(%q) found %d names, encoding/json %d", b, len(got), len(want))
		}
		for name, v := range want {
			var a, b2 any
			if json.Unmarshal(v, &a) != nil || json.Unmarshal(got[name], &b2) != nil || !reflect.DeepEqual(a, b2) {
				t.Fatalf("member %q: scanned %s, encoding/json %s", name, got[name], v)
			}
		}
	})
}
