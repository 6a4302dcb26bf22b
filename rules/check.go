package rules

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/llmusage/llmusage/internal/suggest"
)

// checkShape walks the YAML of a limits file against configFile before
// it is decoded, so that an unknown key or a value of the wrong kind is
// told with its line, the key and its nearest valid name, in the file's
// words: yaml's own errors name Go types (rules.fileRule, int64), which
// mean nothing to whoever wrote the file.
func checkShape(name string, data []byte) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("cannot parse %s", syntaxError(name, err))
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil // an empty file: no rules
	}
	root := resolve(doc.Content[0])
	if isNull(root) {
		return nil
	}
	if root.Kind != yaml.MappingNode {
		return fmt.Errorf("cannot parse %s:%d: want a mapping of providers, limits and prices, not %s", name, root.Line, describeNode(root))
	}
	return checkNode(name, "", root, reflect.TypeFor[configFile]())
}

// decimalType is a scalar of its own (an exact amount), not a struct.
var decimalType = reflect.TypeFor[decimal]()

// checkNode checks n against t; path names n in messages (limits[0]).
func checkNode(file, path string, n *yaml.Node, t reflect.Type) error {
	n = resolve(n)
	if isNull(n) {
		return nil // yaml leaves the zero value, as an absent key does
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	// A key's value is told as its parent's "key"; a list entry by its index.
	where, field := path, path
	if i := strings.LastIndex(path, "."); !strings.HasSuffix(path, "]") {
		where, field = path[:max(i, 0)], strconv.Quote(path[i+1:])
	}
	at := func(format string, args ...any) error {
		return fmt.Errorf("cannot parse %s: %s", place(file, n.Line, where), fmt.Sprintf(format, args...))
	}
	switch {
	case t == decimalType:
		if n.Kind != yaml.ScalarNode {
			return at("%s must be a number, not %s", field, describeNode(n))
		}
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return at("want a mapping of %s, not %s", strings.Join(yamlKeys(t), ", "), describeNode(n))
		}
		known := yamlKeys(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Value == "<<" && k.Tag == "!!merge" {
				continue // a merge key: its mapping's keys are yaml's to merge
			}
			ft, ok := fieldOf(t, k.Value)
			if !ok {
				msg := fmt.Sprintf("unknown field %q", k.Value)
				if s := suggest.Nearest(k.Value, known); s != "" {
					msg += fmt.Sprintf("; did you mean %q?", s)
				} else {
					msg += fmt.Sprintf("; want %s", strings.Join(known, ", "))
				}
				return fmt.Errorf("cannot parse %s: %s", place(file, k.Line, path), msg)
			}
			if err := checkNode(file, join(path, k.Value), v, ft); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return at("%s must be a list, not %s", field, describeNode(n))
		}
		for i, e := range n.Content {
			if err := checkNode(file, fmt.Sprintf("%s[%d]", path, i), e, t.Elem()); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Int64:
		if n.Kind != yaml.ScalarNode {
			return at("%s must be a whole number, not %s", field, describeNode(n))
		}
		if n.ShortTag() != "!!int" {
			return at("%s must be a whole number, not %q", field, n.Value)
		}
		if _, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 64); err != nil {
			return at("%s is too large: %s", field, n.Value)
		}
	case t.Kind() == reflect.String:
		if n.Kind != yaml.ScalarNode {
			return at("%s must be text, not %s", field, describeNode(n))
		}
	}
	return nil
}

// yamlKeys are the keys of a struct decoded from YAML, in field order.
func yamlKeys(t reflect.Type) []string {
	var keys []string
	for f := range t.Fields() {
		if k := yamlKey(f); k != "" {
			keys = append(keys, k)
		}
	}
	return keys
}

// fieldOf is the type of t's field under YAML key key.
func fieldOf(t reflect.Type, key string) (reflect.Type, bool) {
	for f := range t.Fields() {
		if yamlKey(f) == key {
			return f.Type, true
		}
	}
	return nil, false
}

func yamlKey(f reflect.StructField) string {
	tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if tag == "-" || !f.IsExported() {
		return ""
	}
	if tag == "" {
		return strings.ToLower(f.Name)
	}
	return tag
}

// resolve follows an alias to the node it names.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describeNode names a node's kind as the file's author sees it.
func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.ScalarNode:
		return strconv.Quote(n.Value)
	}
	return "a YAML node"
}

// place is file:line, then the path of the entry when there is one.
func place(file string, line int, path string) string {
	if path == "" {
		return fmt.Sprintf("%s:%d", file, line)
	}
	return fmt.Sprintf("%s:%d: %s", file, line, path)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// yamlLine matches yaml's "yaml: line 3: ..." syntax errors.
var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError formats a YAML syntax error as file:line: message.
func syntaxError(file string, err error) string {
	var te *yaml.TypeError
	msg := err.Error()
	if errors.As(err, &te) {
		parts := make([]string, len(te.Errors))
		for i, e := range te.Errors {
			parts[i] = syntaxError(file, errors.New("yaml: "+e))
		}
		return strings.Join(parts, "; ")
	}
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("%s:%s: %s", file, m[1], m[2])
	}
	return fmt.Sprintf("%s: %s", file, strings.TrimPrefix(msg, "yaml: "))
}
