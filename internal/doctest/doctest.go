// Package doctest reads the examples of the project's markdown so that a
// test can run them: fenced code blocks, the HTML comment that marks one
// (not run, or how to start the sidecar), and the output block shown
// under a command. The convention it reads is described in docs/layout.md
// ("Examples are tested").
package doctest

import (
	"fmt"
	"regexp"
	"strings"
)

// Block is one fenced code block of a markdown page.
type Block struct {
	// Line is the 1-based line of the opening fence, for messages.
	Line int
	// Lang is the info string's first word (sh, python, json...).
	Lang string
	// Text is the content, without the fence's own indentation (a block
	// inside a list item is indented).
	Text string
	// Directive is the HTML comment on the line just above the fence,
	// without "<!--" and "-->", trimmed; "" without one.
	Directive string
	// Output is the block shown as this one's output: a console, json or
	// text block right after a runnable one, with only blank lines
	// between. Nil when nothing is shown.
	Output *Block
}

// Page is a markdown page's blocks, outputs attached to their commands.
type Page struct {
	// Blocks are the page's blocks in order, outputs excluded (they hang
	// off their command's Output).
	Blocks []*Block
	// NotRun is the reason of a page-wide `<!-- not run, whole page: ... -->`,
	// "" when the page's blocks are judged one by one.
	NotRun string
}

// Runnable tells whether blocks in lang are run: shell and Python.
func Runnable(lang string) bool {
	switch lang {
	case "sh", "bash", "shell", "python":
		return true
	}
	return false
}

// NotRun returns the reason of a block's `<!-- not run: reason -->`, and
// whether it has one.
func (b *Block) NotRun() (string, bool) {
	reason, ok := strings.CutPrefix(b.Directive, "not run:")
	return strings.TrimSpace(reason), ok
}

// Parse reads a markdown page. An output block that follows no runnable
// block, or a fence left open, is an error: a shown output must belong to
// a command the test runs.
func Parse(src string) (*Page, error) {
	lines := strings.Split(strings.ReplaceAll(src, "\r\n", "\n"), "\n")
	page := &Page{}
	var prev *Block  // the last block, for pairing an output with it
	blankSince := -1 // the line after prev's closing fence
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		trimmed := strings.TrimSpace(line)
		if reason, ok := strings.CutPrefix(trimmed, "<!-- not run, whole page:"); ok {
			page.NotRun = strings.TrimSpace(strings.TrimSuffix(reason, "-->"))
		}
		if !strings.HasPrefix(trimmed, "```") {
			if trimmed != "" {
				blankSince = -1
			}
			continue
		}
		indent := line[:len(line)-len(strings.TrimLeft(line, " "))]
		info := strings.Fields(strings.TrimPrefix(trimmed, "```"))
		b := &Block{Line: i + 1}
		if len(info) > 0 {
			b.Lang = info[0]
		}
		if j := previousNonBlank(lines, i); j >= 0 {
			if d := strings.TrimSpace(lines[j]); strings.HasPrefix(d, "<!--") && strings.HasSuffix(d, "-->") {
				b.Directive = strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(d, "<!--"), "-->"))
			}
		}
		var body []string
		closed := false
		for i++; i < len(lines); i++ {
			if strings.TrimSpace(lines[i]) == "```" {
				closed = true
				break
			}
			body = append(body, strings.TrimPrefix(lines[i], indent))
		}
		if !closed {
			return nil, fmt.Errorf("line %d: cannot find the end of the block", b.Line)
		}
		b.Text = strings.Join(body, "\n") + "\n"
		if isOutput(b.Lang) && prev != nil && Runnable(prev.Lang) && prev.Output == nil && blankSince >= 0 {
			prev.Output = b
			prev, blankSince = nil, -1
			continue
		}
		if b.Lang == "console" {
			return nil, fmt.Errorf("line %d: a console block shows the output of no command (put it right under a sh block)", b.Line)
		}
		page.Blocks = append(page.Blocks, b)
		prev, blankSince = b, i+1
	}
	return page, nil
}

// Match tells whether got is the output shown, where the shown text may
// stand for what varies: <id> an identifier (a UUID...), <time> an RFC
// 3339 time, <date> a date, <n> a number, and "..." or "…" anything.
// Trailing spaces and blank lines at either end are ignored; with json,
// so is the whitespace between JSON tokens, so that a pretty-printed
// answer matches the sidecar's compact one.
func Match(shown, got string, json bool) bool {
	shown, got = normalize(shown), normalize(got)
	if json {
		shown, got = compactJSON(shown), compactJSON(got)
	}
	var pattern strings.Builder
	pattern.WriteString(`(?s)\A`)
	rest := shown
	for rest != "" {
		at, length, re := nextPlaceholder(rest)
		if at < 0 {
			pattern.WriteString(regexp.QuoteMeta(rest))
			break
		}
		pattern.WriteString(regexp.QuoteMeta(rest[:at]))
		pattern.WriteString(re)
		rest = rest[at+length:]
	}
	pattern.WriteString(`\z`)
	return regexp.MustCompile(pattern.String()).MatchString(got)
}

// placeholders maps what a shown output may say to what it matches.
var placeholders = []struct{ text, re string }{
	{"<id>", `[0-9A-Za-z_-]+`},
	{"<time>", `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`},
	{"<date>", `\d{4}-\d\d-\d\d`},
	{"<n>", `-?\d+(\.\d+)?([eE][+-]?\d+)?`},
	{"...", `.*?`},
	{"…", `.*?`},
}

// nextPlaceholder finds the first placeholder in s: its offset (-1 for
// none), its length and its regular expression.
func nextPlaceholder(s string) (int, int, string) {
	at, length, re := -1, 0, ""
	for _, p := range placeholders {
		if i := strings.Index(s, p.text); i >= 0 && (at < 0 || i < at) {
			at, length, re = i, len(p.text), p.re
		}
	}
	return at, length, re
}

// isOutput tells whether a block of lang can be a command's output.
func isOutput(lang string) bool {
	return lang == "console" || lang == "json" || lang == "text"
}

// previousNonBlank is the index of the last non-blank line before i, or -1.
func previousNonBlank(lines []string, i int) int {
	for j := i - 1; j >= 0; j-- {
		if strings.TrimSpace(lines[j]) != "" {
			return j
		}
	}
	return -1
}

// normalize drops carriage returns, trailing spaces and blank lines at the ends.
func normalize(s string) string {
	lines := strings.Split(strings.ReplaceAll(s, "\r", ""), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimRight(l, " \t")
	}
	return strings.Trim(strings.Join(lines, "\n"), "\n")
}

// compactJSON removes the whitespace outside JSON strings.
func compactJSON(s string) string {
	var b strings.Builder
	inString, escaped := false, false
	for _, r := range s {
		switch {
		case inString:
			b.WriteRune(r)
			if escaped {
				escaped = false
			} else if r == '\\' {
				escaped = true
			} else if r == '"' {
				inString = false
			}
		case r == '"':
			inString = true
			b.WriteRune(r)
		case r == ' ' || r == '\n' || r == '\t':
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
