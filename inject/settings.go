package inject

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
)

// The annotations the injector reads on a pod, and the one it writes.
const (
	// AnnotationInject is "true" to inject a pod wherever it runs, or
	// "false" to keep a pod of a selected namespace without a sidecar.
	AnnotationInject = "llmusage.io/inject"
	// AnnotationInjected marks an injected pod: "<version>/<digest of the
	// sidecar>". A pod that has it is never injected again.
	AnnotationInjected = "llmusage.io/injected"
	// AnnotationDefaultContainer names the container kubectl logs and
	// exec pick: the application's, never the sidecar.
	AnnotationDefaultContainer = "kubectl.kubernetes.io/default-container"

	AnnotationSidecarMode     = "llmusage.io/sidecar-mode"
	AnnotationImage           = "llmusage.io/image"
	AnnotationCPURequest      = "llmusage.io/cpu-request"
	AnnotationCPULimit        = "llmusage.io/cpu-limit"
	AnnotationMemoryRequest   = "llmusage.io/memory-request"
	AnnotationMemoryLimit     = "llmusage.io/memory-limit"
	AnnotationLimitsConfigMap = "llmusage.io/limits-configmap"
	AnnotationDatabaseSecret  = "llmusage.io/database-secret"
	AnnotationRedisSecret     = "llmusage.io/redis-secret"
	AnnotationArgs            = "llmusage.io/args"
)

// The sidecar modes.
const (
	// ModeNative injects an init container with restartPolicy Always
	// (Kubernetes 1.29 and later).
	ModeNative = "native"
	// ModeClassic injects a second regular container.
	ModeClassic = "classic"
)

// Settings are what may differ between injected sidecars: the injector's
// flags set the defaults, a pod's annotations override them. An empty
// field keeps what the example Deployment says.
type Settings struct {
	// Mode is ModeNative or ModeClassic.
	Mode string
	// Image is the sidecar's image.
	Image string
	// CPURequest, CPULimit, MemoryRequest and MemoryLimit are quantities
	// (50m, 256Mi).
	CPURequest, CPULimit, MemoryRequest, MemoryLimit string
	// LimitsConfigMap holds the limits file (key limits.yaml).
	LimitsConfigMap string
	// DatabaseSecret holds the database URL (key url).
	DatabaseSecret string
	// RedisSecret, when set, holds the Redis URL (key url): the sidecar
	// then shares its limits through Redis.
	RedisSecret string
	// Args are added after the example's serve arguments.
	Args []string
}

// field is one setting: its annotation, the flag of its default, how to
// check and set it.
type field struct {
	annotation, flag string
	get              func(*Settings) string
	set              func(*Settings, string) error
}

var fields = []field{
	{AnnotationSidecarMode, "--sidecar-mode", func(s *Settings) string { return s.Mode }, func(s *Settings, v string) error {
		if v != ModeNative && v != ModeClassic {
			return fmt.Errorf("want %s or %s", ModeNative, ModeClassic)
		}
		s.Mode = v
		return nil
	}},
	{AnnotationImage, "--sidecar-image", func(s *Settings) string { return s.Image }, func(s *Settings, v string) error {
		if strings.ContainsAny(v, " \t\r\n") {
			return fmt.Errorf("an image reference has no spaces")
		}
		s.Image = v
		return nil
	}},
	quantity(AnnotationCPURequest, "--sidecar-cpu-request", func(s *Settings) *string { return &s.CPURequest }),
	quantity(AnnotationCPULimit, "--sidecar-cpu-limit", func(s *Settings) *string { return &s.CPULimit }),
	quantity(AnnotationMemoryRequest, "--sidecar-memory-request", func(s *Settings) *string { return &s.MemoryRequest }),
	quantity(AnnotationMemoryLimit, "--sidecar-memory-limit", func(s *Settings) *string { return &s.MemoryLimit }),
	objectName(AnnotationLimitsConfigMap, "--limits-configmap", func(s *Settings) *string { return &s.LimitsConfigMap }),
	objectName(AnnotationDatabaseSecret, "--database-secret", func(s *Settings) *string { return &s.DatabaseSecret }),
	objectName(AnnotationRedisSecret, "--redis-secret", func(s *Settings) *string { return &s.RedisSecret }),
	{AnnotationArgs, "--sidecar-args", func(s *Settings) string { return strings.Join(s.Args, " ") }, func(s *Settings, v string) error {
		args := strings.Fields(v)
		if err := checkArgs(args); err != nil {
			return err
		}
		s.Args = args
		return nil
	}},
}

func quantity(annotation, flag string, p func(*Settings) *string) field {
	return field{annotation, flag, func(s *Settings) string { return *p(s) }, func(s *Settings, v string) error {
		q, err := resource.ParseQuantity(v)
		if err != nil {
			return fmt.Errorf("not a quantity (such as 100m or 128Mi)")
		}
		if q.Sign() <= 0 {
			return fmt.Errorf("not above zero")
		}
		*p(s) = v
		return nil
	}}
}

func objectName(annotation, flag string, p func(*Settings) *string) field {
	return field{annotation, flag, func(s *Settings) string { return *p(s) }, func(s *Settings, v string) error {
		if errs := validation.IsDNS1123Subdomain(v); len(errs) > 0 {
			return fmt.Errorf("not an object name: a-z, 0-9, '-', '.'")
		}
		*p(s) = v
		return nil
	}}
}

// checkArgs accepts flags only (--name or --name=value): serve's
// command is the example's.
func checkArgs(args []string) error {
	for _, a := range args {
		if !strings.HasPrefix(a, "--") || len(a) < 3 {
			return fmt.Errorf("%q is not a flag (--name=value)", a)
		}
	}
	return nil
}

// problem is an annotation whose value the injector ignored.
type problem struct {
	annotation, value string
	err               error
}

func (p problem) String() string {
	v := p.value
	if len(v) > 40 {
		v = v[:37] + "..."
	}
	return fmt.Sprintf("llmusage: %s=%q ignored (%s), default used", p.annotation, v, p.err)
}

// Validate checks the defaults, naming the flag of a bad one.
func (s Settings) Validate() error {
	var probe Settings
	for _, f := range fields {
		v := f.get(&s)
		if v == "" && f.annotation != AnnotationSidecarMode {
			continue
		}
		if err := f.set(&probe, v); err != nil {
			return fmt.Errorf("cannot use %s %q: %w", f.flag, v, err)
		}
	}
	for _, r := range []string{"cpu", "memory"} {
		if err := s.checkResource(r); err != nil {
			return fmt.Errorf("cannot use --sidecar-%s-request and --sidecar-%s-limit: %w", r, r, err)
		}
	}
	return nil
}

// override returns the defaults with the pod's annotations applied, and
// the annotations it ignored: a bad value keeps the default, so that a
// typo never keeps a pod from starting.
func (s Settings) override(annotations map[string]string) (Settings, []problem) {
	out := s
	out.Args = append([]string(nil), s.Args...)
	var problems []problem
	for _, f := range fields {
		v, ok := annotations[f.annotation]
		if !ok {
			continue
		}
		if err := f.set(&out, strings.TrimSpace(v)); err != nil {
			problems = append(problems, problem{f.annotation, v, err})
		}
	}
	// A request above its limit would make the API server refuse the
	// pod: back to both defaults.
	for _, r := range []struct {
		name             string
		req, lim         *string
		reqAnn, limAnn   string
		defaultReq, dLim string
	}{
		{"cpu", &out.CPURequest, &out.CPULimit, AnnotationCPURequest, AnnotationCPULimit, s.CPURequest, s.CPULimit},
		{"memory", &out.MemoryRequest, &out.MemoryLimit, AnnotationMemoryRequest, AnnotationMemoryLimit, s.MemoryRequest, s.MemoryLimit},
	} {
		if err := out.checkResource(r.name); err != nil {
			ann := r.reqAnn
			if _, ok := annotations[ann]; !ok {
				ann = r.limAnn
			}
			problems = append(problems, problem{ann, annotations[ann], err})
			*r.req, *r.lim = r.defaultReq, r.dLim
		}
	}
	return out, problems
}

// checkResource refuses a request above its limit. An empty value is the
// example's, which the caller resolves: here only explicit pairs count.
func (s Settings) checkResource(name string) error {
	req, lim := s.CPURequest, s.CPULimit
	if name == "memory" {
		req, lim = s.MemoryRequest, s.MemoryLimit
	}
	if req == "" || lim == "" {
		return nil
	}
	rq, err1 := resource.ParseQuantity(req)
	lq, err2 := resource.ParseQuantity(lim)
	if err1 != nil || err2 != nil {
		return nil // reported as a bad quantity already
	}
	if rq.Cmp(lq) > 0 {
		return fmt.Errorf("%s request %s is above its limit %s", name, req, lim)
	}
	return nil
}

// resolve fills the empty resource settings from the example container,
// so that a request and a limit are compared whichever of them was set.
func (s Settings) resolve(c *corev1.Container) Settings {
	get := func(l corev1.ResourceList, n corev1.ResourceName) string {
		if q, ok := l[n]; ok {
			return q.String()
		}
		return ""
	}
	for _, p := range []struct {
		v    *string
		list corev1.ResourceList
		name corev1.ResourceName
	}{
		{&s.CPURequest, c.Resources.Requests, corev1.ResourceCPU},
		{&s.CPULimit, c.Resources.Limits, corev1.ResourceCPU},
		{&s.MemoryRequest, c.Resources.Requests, corev1.ResourceMemory},
		{&s.MemoryLimit, c.Resources.Limits, corev1.ResourceMemory},
	} {
		if *p.v == "" {
			*p.v = get(p.list, p.name)
		}
	}
	return s
}
