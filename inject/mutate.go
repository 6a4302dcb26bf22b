package inject

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/llmusage/llmusage/deploy/kubernetes"
)

// The results and reasons of llmusage_inject_requests_total.
const (
	resultInjected = "injected"
	resultSkipped  = "skipped"
	resultError    = "error"

	reasonNamespace  = "namespace"  // injected: the namespace is selected
	reasonAnnotation = "annotation" // injected: llmusage.io/inject: "true"

	reasonOptedOut     = "opted_out"              // llmusage.io/inject: "false"
	reasonNotSelected  = "not_selected"           // /mutate/annotated without the annotation
	reasonInjected     = "already_injected"       // llmusage.io/injected is set
	reasonHasContainer = "has_llmusage_container" // a container named llmusage
	reasonNotPod       = "not_a_pod"              // another kind, or a subresource
	reasonNotCreate    = "not_create"             // an UPDATE, DELETE or CONNECT

	reasonBadRequest = "bad_request" // answered 400
	reasonDecodePod  = "decode_pod"  // allowed, with a warning
	reasonRender     = "render"      // allowed, with a warning
)

// patchOp is one RFC 6902 operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// outcome is what admit decided, for the response, the metrics and the log.
type outcome struct {
	result, reason string
	patch          []patchOp
	warnings       []string
	invalid        []string // annotations ignored
}

// admit decides on one request. It never refuses: a pod the injector
// cannot handle is allowed unchanged, with a warning.
func (in *Injector) admit(req *admissionv1.AdmissionRequest, namespaceSelected bool) outcome {
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.SubResource != "" {
		return outcome{result: resultSkipped, reason: reasonNotPod,
			warnings: []string{fmt.Sprintf("llmusage injector: %s %s is not a pod: nothing injected", req.Kind.Kind, req.SubResource)}}
	}
	if req.Operation != admissionv1.Create {
		return outcome{result: resultSkipped, reason: reasonNotCreate}
	}
	var pod corev1.Pod
	if len(req.Object.Raw) == 0 {
		return outcome{result: resultError, reason: reasonDecodePod,
			warnings: []string{"llmusage injector: the review holds no pod: nothing injected"}}
	}
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return outcome{result: resultError, reason: reasonDecodePod,
			warnings: []string{"llmusage injector: cannot decode the pod: nothing injected"}}
	}
	var o outcome
	reason := ""
	switch v, ok := pod.Annotations[AnnotationInject]; {
	case ok && v == "false":
		return outcome{result: resultSkipped, reason: reasonOptedOut}
	case ok && v == "true":
		reason = reasonAnnotation
	case ok:
		o.warnings = append(o.warnings, problem{AnnotationInject, v, fmt.Errorf("want true or false")}.String())
		o.invalid = append(o.invalid, AnnotationInject)
	}
	if reason == "" && namespaceSelected {
		reason = reasonNamespace
	}
	if reason == "" {
		o.result, o.reason = resultSkipped, reasonNotSelected
		return o
	}
	if _, ok := pod.Annotations[AnnotationInjected]; ok {
		return outcome{result: resultSkipped, reason: reasonInjected}
	}
	for _, c := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if c.Name == kubernetes.ContainerName {
			return outcome{result: resultSkipped, reason: reasonHasContainer}
		}
	}
	settings, problems := in.defaults.override(pod.Annotations)
	for _, p := range problems {
		o.warnings = append(o.warnings, p.String())
		o.invalid = append(o.invalid, p.annotation)
	}
	patch, err := in.patch(&pod, settings)
	if err != nil {
		o.result, o.reason = resultError, reasonRender
		o.warnings = append(o.warnings, "llmusage injector: "+err.Error()+": nothing injected")
		return o
	}
	o.result, o.reason, o.patch = resultInjected, reason, patch
	return o
}

// sidecar renders the sidecar of settings: the example's container and
// volumes, with the settings applied.
func (in *Injector) sidecar(s Settings) (*corev1.Container, []corev1.Volume, *kubernetes.Sidecar, error) {
	tpl := in.native
	if s.Mode == ModeClassic {
		tpl = in.classic
	}
	c := tpl.Container.DeepCopy()
	if s.Image != "" {
		c.Image = s.Image
	}
	for i := range c.Env {
		if ref := c.Env[i].ValueFrom; ref != nil && ref.SecretKeyRef != nil && c.Env[i].Name == "LLMUSAGE_DATABASE_URL" && s.DatabaseSecret != "" {
			ref.SecretKeyRef.Name = s.DatabaseSecret
		}
	}
	if s.RedisSecret != "" {
		for _, e := range tpl.RedisEnv {
			e := *e.DeepCopy()
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				e.ValueFrom.SecretKeyRef.Name = s.RedisSecret
			}
			c.Env = append(c.Env, e)
		}
	}
	for _, r := range []struct {
		v    string
		list *corev1.ResourceList
		name corev1.ResourceName
	}{
		{s.CPURequest, &c.Resources.Requests, corev1.ResourceCPU},
		{s.CPULimit, &c.Resources.Limits, corev1.ResourceCPU},
		{s.MemoryRequest, &c.Resources.Requests, corev1.ResourceMemory},
		{s.MemoryLimit, &c.Resources.Limits, corev1.ResourceMemory},
	} {
		if r.v == "" {
			continue
		}
		q, err := resource.ParseQuantity(r.v)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("cannot parse the %s quantity %q", r.name, r.v)
		}
		if *r.list == nil {
			*r.list = corev1.ResourceList{}
		}
		(*r.list)[r.name] = q
	}
	c.Args = append(c.Args, s.Args...)
	var volumes []corev1.Volume
	for _, v := range tpl.Volumes {
		v := *v.DeepCopy()
		if v.ConfigMap != nil && s.LimitsConfigMap != "" {
			v.ConfigMap.Name = s.LimitsConfigMap
		}
		volumes = append(volumes, v)
	}
	return c, volumes, tpl, nil
}

// patch returns the JSON patch that injects the sidecar of s into pod.
func (in *Injector) patch(pod *corev1.Pod, s Settings) ([]patchOp, error) {
	c, volumes, tpl, err := in.sidecar(s)
	if err != nil {
		return nil, err
	}
	var ops []patchOp
	// The marker first: its value is what was injected.
	digest, err := digestOf(c, volumes)
	if err != nil {
		return nil, err
	}
	annotations := map[string]string{AnnotationInjected: in.version + "/" + digest}
	if _, ok := pod.Annotations[AnnotationDefaultContainer]; !ok && len(pod.Spec.Containers) > 0 {
		annotations[AnnotationDefaultContainer] = pod.Spec.Containers[0].Name
	}
	if pod.Annotations == nil {
		ops = append(ops, patchOp{"add", "/metadata/annotations", annotations})
	} else {
		for _, k := range []string{AnnotationInjected, AnnotationDefaultContainer} {
			if v, ok := annotations[k]; ok {
				ops = append(ops, patchOp{"add", "/metadata/annotations/" + escape(k), v})
			}
		}
	}
	if tpl.Native {
		ops = appendItem(ops, "/spec/initContainers", len(pod.Spec.InitContainers), c)
	} else {
		ops = appendItem(ops, "/spec/containers", len(pod.Spec.Containers), c)
	}
	n := len(pod.Spec.Volumes)
	for _, v := range volumes {
		// A volume of the same name is the pod's own: a
		// PersistentVolumeClaim for the spool, say.
		if !hasVolume(pod.Spec.Volumes, v.Name) {
			ops = appendItem(ops, "/spec/volumes", n, v)
			n++
		}
	}
	if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || *g < tpl.TerminationGracePeriodSeconds {
		ops = append(ops, patchOp{"add", "/spec/terminationGracePeriodSeconds", tpl.TerminationGracePeriodSeconds})
	}
	// The application's containers learn where the sidecar is, unless
	// they say already.
	for i, app := range pod.Spec.Containers {
		n := len(app.Env)
		for _, e := range tpl.AppEnv {
			if !hasEnv(app.Env, e.Name) {
				ops = appendItem(ops, fmt.Sprintf("/spec/containers/%d/env", i), n, e)
				n++
			}
		}
	}
	return ops, nil
}

// appendItem adds v at the end of the array at path, which holds n items
// (none: the array may be absent, and is created).
func appendItem(ops []patchOp, path string, n int, v any) []patchOp {
	if n == 0 {
		return append(ops, patchOp{"add", path, []any{v}})
	}
	return append(ops, patchOp{"add", path + "/-", v})
}

func hasVolume(vs []corev1.Volume, name string) bool {
	for _, v := range vs {
		if v.Name == name {
			return true
		}
	}
	return false
}

func hasEnv(es []corev1.EnvVar, name string) bool {
	for _, e := range es {
		if e.Name == name {
			return true
		}
	}
	return false
}

// escape makes a JSON pointer token of an annotation key (RFC 6901).
func escape(k string) string {
	return strings.ReplaceAll(strings.ReplaceAll(k, "~", "~0"), "/", "~1")
}

// digestOf is 12 hex digits of the sidecar's sha256.
func digestOf(c *corev1.Container, volumes []corev1.Volume) (string, error) {
	b, err := json.Marshal(struct {
		C *corev1.Container `json:"c"`
		V []corev1.Volume   `json:"v"`
	}{c, volumes})
	if err != nil {
		return "", fmt.Errorf("cannot encode the sidecar: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6]), nil
}
