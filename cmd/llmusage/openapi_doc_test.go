package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/limiter"
	"github.com/llmusage/llmusage/otlp"
	"github.com/llmusage/llmusage/proxy"
	"github.com/llmusage/llmusage/usage"
)

// routesForTest are the routes of both listeners of a sidecar with every
// option on (the usage API, the proxy's built-in upstreams, OTLP,
// --debug-pprof), as apiHandler and metricsHandler register them.
func routesForTest(t *testing.T) []collector.Route {
	lim, err := limiter.New(nil, limiter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := collector.New(collector.Options{Limiter: lim, Usage: noUsage{}})
	p, err := proxy.New(proxy.Options{Collector: c, Upstreams: proxy.Defaults()})
	if err != nil {
		t.Fatal(err)
	}
	s := &sidecar{collector: c, proxy: p, otlp: otlp.New(otlp.Options{Collector: c})}
	routes := append(s.apiRoutes(), s.healthRoutes()...)
	return append(routes, pprofRoutes()...)
}

// noUsage is a UsageReader that is never asked: the routes are only listed.
type noUsage struct{}

func (noUsage) Usage(context.Context, usage.Query) (usage.Breakdown, error) {
	return usage.Breakdown{}, nil
}

func (noUsage) Logs(context.Context, usage.LogQuery) (usage.LogPage, error) {
	return usage.LogPage{}, nil
}

// apiPageEndpoint matches a row of docs/api.md's endpoints table.
var apiPageEndpoint = regexp.MustCompile("(?m)^\\| `(GET|POST|PUT|DELETE|PATCH) (/[^` ]*)` \\|")

// apiPageExample matches an example answer of docs/api.md.
var apiPageExample = regexp.MustCompile("(?s)<!-- example: ([A-Z]+) (\\S+) ([0-9]{3}) -->\n```json\n(.*?)\n```")

// checkAPIPage: docs/api.md lists exactly the document's operations, and
// its example answers are answers of the document with the shape of the
// real ones (answers, keyed "METHOD path status").
func checkAPIPage(t *testing.T, doc *openapi3.T, answers map[string][]byte) {
	page, err := os.ReadFile("../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{}
	for _, m := range apiPageEndpoint.FindAllStringSubmatch(string(page), -1) {
		key := m[1] + " " + m[2]
		if listed[key] {
			t.Errorf("docs/api.md lists %s twice", key)
		}
		listed[key] = true
	}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			if !listed[method+" "+path] {
				t.Errorf("docs/api.md does not list %s %s of docs/openapi.yaml", method, path)
			}
			delete(listed, method+" "+path)
		}
	}
	for key := range listed {
		t.Errorf("docs/api.md lists %s, which docs/openapi.yaml does not have", key)
	}

	examples := apiPageExample.FindAllStringSubmatch(string(page), -1)
	if len(examples) == 0 {
		t.Error("docs/api.md has no example answer")
	}
	for _, m := range examples {
		key := m[1] + " " + m[2] + " " + m[3]
		var example any
		if err := json.Unmarshal([]byte(m[4]), &example); err != nil {
			t.Errorf("docs/api.md's example of %s is not JSON: %v", key, err)
			continue
		}
		schema := exampleSchema(t, doc, m[1], m[2], m[3])
		if schema == nil {
			continue
		}
		if err := schema.VisitJSON(example, openapi3.EnableJSONSchema2020()); err != nil {
			t.Errorf("docs/api.md's example of %s does not match docs/openapi.yaml: %v", key, err)
		}
		real, ok := answers[key]
		if !ok {
			t.Errorf("docs/api.md shows an answer of %s, which TestOpenAPI does not ask for", key)
			continue
		}
		var got any
		if err := json.Unmarshal(bytes.TrimSpace(real), &got); err != nil {
			t.Errorf("the real answer of %s is not JSON: %v", key, err)
			continue
		}
		// An error's answer is the same whenever asked: it is shown as it is.
		if _, isError := got.(map[string]any)["error"]; isError && !reflect.DeepEqual(example, got) {
			t.Errorf("docs/api.md's example of %s is not the real answer: %s", key, truncateBody(real))
		}
		if want, have := shapeOf(example), shapeOf(got); want != have {
			t.Errorf("docs/api.md's example of %s has the shape\n%s\nand the real answer\n%s\n(the answer: %s)", key, want, have, truncateBody(real))
		}
	}
}

// exampleSchema is the JSON schema of an answer: the operation's, or the
// Error of a path the document does not have.
func exampleSchema(t *testing.T, doc *openapi3.T, method, path, status string) *openapi3.Schema {
	item := doc.Paths.Value(path)
	if item == nil {
		return doc.Components.Schemas["Error"].Value
	}
	op := item.GetOperation(method)
	code, _ := strconv.Atoi(status)
	if op == nil || op.Responses.Status(code) == nil {
		t.Errorf("docs/api.md shows an answer %s to %s %s, which docs/openapi.yaml does not document", status, method, path)
		return nil
	}
	mt := op.Responses.Status(code).Value.Content.Get("application/json")
	if mt == nil || mt.Schema == nil {
		t.Errorf("docs/openapi.yaml has no JSON answer %s to %s %s", status, method, path)
		return nil
	}
	return mt.Schema.Value
}

// shapeOf describes a JSON value by its members' names and types, not
// their values, the first element standing for an array's.
func shapeOf(v any) string {
	var b strings.Builder
	var walk func(v any, indent string)
	walk = func(v any, indent string) {
		switch x := v.(type) {
		case map[string]any:
			b.WriteString("{\n")
			for _, k := range sortedKeys(x) {
				b.WriteString(indent + "  " + k + ": ")
				walk(x[k], indent+"  ")
				b.WriteString("\n")
			}
			b.WriteString(indent + "}")
		case []any:
			b.WriteString("[")
			if len(x) > 0 {
				walk(x[0], indent)
			}
			b.WriteString("]")
		case string:
			b.WriteString("string")
		case float64:
			b.WriteString("number")
		case bool:
			b.WriteString("boolean")
		case nil:
			b.WriteString("null")
		}
	}
	walk(v, "")
	return b.String()
}
