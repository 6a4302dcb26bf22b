// Package docs holds what the sidecar serves of its documentation: the
// OpenAPI description of its HTTP API, openapi.yaml.
package docs

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"sync"

	"go.yaml.in/yaml/v3"
)

// openAPIYAML is openapi.yaml; a string, so that nothing can change it.
//
//go:embed openapi.yaml
var openAPIYAML string

// OpenAPIYAML returns openapi.yaml as written.
func OpenAPIYAML() string { return openAPIYAML }

// OpenAPI is openapi.yaml in JSON, converted once, when first asked for.
// The zero value is ready to use.
type OpenAPI struct {
	// once guards body and err.
	once sync.Once
	// body is the document in JSON.
	body []byte
	// err is why the conversion failed; TestOpenAPIDocument
	// (cmd/llmusage) makes sure it does not.
	err error
}

// JSON returns the document in JSON. The bytes are shared: do not
// modify them.
func (o *OpenAPI) JSON() ([]byte, error) {
	o.once.Do(func() { o.body, o.err = yamlToJSON(openAPIYAML) })
	return o.body, o.err
}

// yamlToJSON converts a YAML document whose mapping keys are all
// strings, as an OpenAPI document's are (status codes quoted).
func yamlToJSON(doc string) ([]byte, error) {
	var v any
	if err := yaml.Unmarshal([]byte(doc), &v); err != nil {
		return nil, fmt.Errorf("cannot parse openapi.yaml: %w", err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("cannot convert openapi.yaml to JSON: %w", err)
	}
	return b, nil
}
