package doctest

import "testing"

// TestParse: outputs hang off their command, directives are read, and
// a console block under no command is an error.
func TestParse(t *testing.T) {
	src := "text\n\n<!-- not run: needs a cluster -->\n```sh\nkubectl get pods\n```\n\n" +
		"- item\n\n  ```sh\n  curl -s localhost:9470/readyz\n  ```\n\n  ```json\n  {\"status\":\"ok\"}\n  ```\n"
	page, err := Parse(src)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Blocks) != 2 {
		t.Fatalf("%d blocks, want 2", len(page.Blocks))
	}
	if reason, ok := page.Blocks[0].NotRun(); !ok || reason != "needs a cluster" {
		t.Fatalf("not run: %q %v", reason, ok)
	}
	b := page.Blocks[1]
	if b.Text != "curl -s localhost:9470/readyz\n" || b.Output == nil || b.Output.Text != "{\"status\":\"ok\"}\n" {
		t.Fatalf("the indented block and its output: %+v %+v", b, b.Output)
	}
	if _, err := Parse("prose\n\n```console\n$ x\n```\n"); err == nil {
		t.Fatal("a console block under no command was accepted")
	}
}

// TestMatch: placeholders stand for what varies, and nothing else.
func TestMatch(t *testing.T) {
	for _, c := range []struct {
		shown, got string
		json, want bool
	}{
		{`{"id":"<id>","at":"<time>"}`, `{"id":"01a253d7-0226","at":"2026-12-08T04:08:51Z"}`, true, true},
		{`{"n":<n>}`, `{"n":149200}`, true, true},
		{"{\"a\": [1,\n  2]}", `{"a":[1,2]}`, true, true},
		{`{"a":"x y"}`, `{"a":"xy"}`, true, false},
		{"remaining 29", "remaining 28", false, false},
		{"a ... z", "a b c z", false, true},
		{"r=<n>;t=1", "r=40;t=2", false, false},
	} {
		if got := Match(c.shown, c.got, c.json); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.shown, c.got, got, c.want)
		}
	}
}
