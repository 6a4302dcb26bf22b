package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/llmusage/llmusage/internal/cli"
	"github.com/llmusage/llmusage/internal/sidecartest"
	"github.com/llmusage/llmusage/redisquota"
)

// The Redis component, and the Secret its patch reads the URL from.
const (
	redisComponent = "components/redis"
	redisSecret    = "llmusage-redis"
	redisSecretKey = "url"
)

// component is what a kustomize Component of deploy/kubernetes may say.
type component struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Patches    []struct {
		Path string `json:"path"`
	} `json:"patches"`
}

// loadComponent reads dir/kustomization.yaml strictly as a Component
// whose patches exist.
func loadComponent(dir string) (*component, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	var c component
	if err := yaml.UnmarshalStrict(raw, &c); err != nil {
		return nil, err
	}
	if c.APIVersion != "kustomize.config.k8s.io/v1alpha1" || c.Kind != "Component" {
		return nil, fmt.Errorf("%s %s, want a kustomize.config.k8s.io/v1alpha1 Component", c.APIVersion, c.Kind)
	}
	if len(c.Patches) == 0 {
		return nil, fmt.Errorf("no patches")
	}
	for _, p := range c.Patches {
		if _, err := os.Stat(filepath.Join(dir, p.Path)); err != nil {
			return nil, err
		}
	}
	return &c, nil
}

// TestKustomizeRedisComponent checks the component that switches the
// deployment to Redis: its patch decodes strictly into a Deployment of
// the base, only adds environment variables to the existing llmusage
// sidecar, reads the URL from the documented Secret, and the sidecar it
// yields passes the base's checks and serve's own validation of its
// flags. With kubectl on PATH, kustomize's rendering is checked too.
func TestKustomizeRedisComponent(t *testing.T) {
	dir := filepath.Join(kubeDir, redisComponent)
	c, err := loadComponent(dir)
	if err != nil {
		t.Fatalf("%s: %s", dir, err)
	}
	base := baseDeployment(t)
	merged := base.DeepCopy()
	for _, p := range c.Patches {
		path := filepath.Join(dir, p.Path)
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		patch := &appsv1.Deployment{}
		if err := yaml.UnmarshalStrict(raw, patch); err != nil {
			t.Fatalf("%s does not decode strictly into a Deployment: %s", path, err)
		}
		if patch.APIVersion != "apps/v1" || patch.Kind != "Deployment" || patch.Name != base.Name {
			t.Fatalf("%s patches %s %s %q, want apps/v1 Deployment %q of the base", path, patch.APIVersion, patch.Kind, patch.Name, base.Name)
		}
		spec := &merged.Spec.Template.Spec
		mergeEnv(t, path, "initContainers", spec.InitContainers, patch.Spec.Template.Spec.InitContainers)
		mergeEnv(t, path, "containers", spec.Containers, patch.Spec.Template.Spec.Containers)
		patch.Spec.Template.Spec.InitContainers, patch.Spec.Template.Spec.Containers = nil, nil
		if !reflect.DeepEqual(patch.Spec, appsv1.DeploymentSpec{}) {
			t.Fatalf("%s changes more than the llmusage sidecar's env: %+v", path, patch.Spec)
		}
	}

	spec := merged.Spec.Template.Spec
	checkLLMUsageContainers(t, "the redis component's "+merged.Name, spec)
	sidecar := llmusageServe(t, spec)
	url := envOf(sidecar, "LLMUSAGE_REDIS_URL")
	if url == nil {
		t.Fatal("the redis component sets no LLMUSAGE_REDIS_URL")
	}
	if url.Value != "" || url.ValueFrom == nil || url.ValueFrom.SecretKeyRef == nil {
		t.Fatal("LLMUSAGE_REDIS_URL must come from a Secret: it may hold a password")
	}
	ref := url.ValueFrom.SecretKeyRef
	if ref.Name != redisSecret || ref.Key != redisSecretKey {
		t.Fatalf("LLMUSAGE_REDIS_URL reads Secret %s key %s, want %s key %s (the documented one)", ref.Name, ref.Key, redisSecret, redisSecretKey)
	}
	if ref.Optional != nil && *ref.Optional {
		t.Fatal("the Redis Secret must not be optional: without it the pods would start with per-pod limits")
	}
	// The Secret is created as documented, with the name and key the patch reads.
	create := fmt.Sprintf("create secret generic %s", redisSecret)
	literal := fmt.Sprintf("--from-literal=%s=", redisSecretKey)
	for _, f := range []string{filepath.Join(dir, "kustomization.yaml"), "../../docs/kubernetes.md"} {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.Join(strings.Fields(strings.ReplaceAll(string(raw), "\\\n", " ")), " ")
		if !strings.Contains(text, create) || !strings.Contains(text, literal) {
			t.Fatalf("%s does not say how to create the Secret (%s ... %s...)", f, create, literal)
		}
	}

	// serve accepts the sidecar's arguments and environment as they are.
	placeholder := "redis://llmusage:PASSWORD@redis.redis.svc:6379/0"
	cfg := serveConfigOf(t, sidecar, placeholder)
	if cfg.Redis.URL != placeholder {
		t.Fatalf("serve reads --redis-url %q, want the Secret's %q", cfg.Redis.URL, placeholder)
	}
	if mode := envOf(sidecar, "LLMUSAGE_REDIS_FAIL_MODE"); mode != nil {
		want, err := redisquota.ParseFailMode(mode.Value)
		if err != nil || cfg.Redis.FailMode != want {
			t.Fatalf("LLMUSAGE_REDIS_FAIL_MODE %q: serve has %q (%v)", mode.Value, cfg.Redis.FailMode, err)
		}
	}

	t.Run("kustomize", func(t *testing.T) {
		sidecartest.RequireTool(t, "kubectl") // the machine image ships it
		rendered := renderWithComponent(t)
		checkLLMUsageContainers(t, "kustomize's "+rendered.Name, rendered.Spec.Template.Spec)
		got, want := llmusageServe(t, rendered.Spec.Template.Spec).Env, sidecar.Env
		byName := func(a, b corev1.EnvVar) int { return strings.Compare(a.Name, b.Name) }
		got, want = slices.SortedFunc(slices.Values(got), byName), slices.SortedFunc(slices.Values(want), byName)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("kustomize renders the sidecar's env as\n%+v\nwant\n%+v", got, want)
		}
	})
}

// baseDeployment returns the base's Deployment, the one the kustomization
// applies.
func baseDeployment(t *testing.T) *appsv1.Deployment {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(kubeDir, "deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	d := &appsv1.Deployment{}
	if err := yaml.UnmarshalStrict(raw, d); err != nil {
		t.Fatal(err)
	}
	return d
}

// mergeEnv applies a patch's containers to base as a strategic merge
// patch does for env: by container name, then by variable name. A patch
// container must name an existing llmusage container and set nothing but
// env.
func mergeEnv(t *testing.T, where, list string, base, patch []corev1.Container) {
	t.Helper()
	for _, pc := range patch {
		i := slices.IndexFunc(base, func(c corev1.Container) bool { return c.Name == pc.Name })
		if i < 0 || !isLLMUsage(base[i]) {
			t.Fatalf("%s: %s %q is not the base's llmusage sidecar (the patch would add a container)", where, list, pc.Name)
		}
		if !reflect.DeepEqual(pc, corev1.Container{Name: pc.Name, Env: pc.Env}) {
			t.Fatalf("%s: %s %q sets more than env", where, list, pc.Name)
		}
		for _, e := range pc.Env {
			if j := slices.IndexFunc(base[i].Env, func(b corev1.EnvVar) bool { return b.Name == e.Name }); j >= 0 {
				base[i].Env[j] = e
			} else {
				base[i].Env = append(base[i].Env, e)
			}
		}
	}
}

// llmusageServe returns the pod's llmusage serve container.
func llmusageServe(t *testing.T, spec corev1.PodSpec) corev1.Container {
	t.Helper()
	for _, c := range append(append([]corev1.Container(nil), spec.InitContainers...), spec.Containers...) {
		if isLLMUsage(c) && len(c.Args) > 0 && c.Args[0] == "serve" {
			return c
		}
	}
	t.Fatal("no llmusage serve container")
	return corev1.Container{}
}

func envOf(c corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

// serveConfigOf runs serve's flag parsing and validation on the
// container's arguments and environment, the Redis Secret holding
// redisURL, and returns the configuration serve would run with.
func serveConfigOf(t *testing.T, c corev1.Container, redisURL string) serveConfig {
	t.Helper()
	args := []string{"llmusage"}
	for _, a := range c.Args {
		if strings.HasPrefix(a, "--limits-file=") {
			a = "--limits-file=" + filepath.Join(kubeDir, "limits.yaml") // the ConfigMap's file
		}
		args = append(args, a)
	}
	for _, e := range c.Env {
		if !strings.HasPrefix(e.Name, "LLMUSAGE_") {
			continue
		}
		switch {
		case e.ValueFrom == nil:
			t.Setenv(e.Name, e.Value)
		case e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name == redisSecret:
			t.Setenv(e.Name, redisURL)
		case e.ValueFrom.SecretKeyRef != nil:
			t.Setenv(e.Name, "postgres://llmusage:PASSWORD@postgres.db.svc:5432/llm")
		default:
			t.Fatalf("%s: %s from %+v", c.Name, e.Name, e.ValueFrom)
		}
	}
	var cfg serveConfig
	cmd := serveCommand()
	cmd.Action = func(ctx *cli.Context) (err error) {
		cfg, err = serveConfigFrom(ctx)
		return err
	}
	var out bytes.Buffer
	app := &cli.App{Name: "llmusage", Commands: []*cli.Command{cmd}, Writer: &out, ErrWriter: &out, OnUsageError: usageError}
	if err := app.Run(args); err != nil {
		t.Fatalf("serve refuses the sidecar's settings: %s %s", err, out.String())
	}
	return cfg
}

// renderWithComponent renders, with kubectl's kustomize, the base with
// the Redis component, as the base's commented-out components entry
// would, and returns its Deployment. The kustomization is written outside
// the base: kustomize refuses one under its own base.
func renderWithComponent(t *testing.T) *appsv1.Deployment {
	t.Helper()
	abs, err := filepath.Abs(kubeDir)
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	rel, err := filepath.Rel(tmp, abs)
	if err != nil {
		t.Fatal(err)
	}
	k := fmt.Sprintf("resources:\n  - %s\ncomponents:\n  - %s\n", rel, filepath.Join(rel, redisComponent))
	if err := os.WriteFile(filepath.Join(tmp, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("kubectl", "kustomize", tmp).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("kubectl kustomize with the redis component: %s %s", err, stderr)
	}
	var found *appsv1.Deployment
	for _, doc := range strings.Split(string(out), "\n---\n") {
		var meta struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatal(err)
		}
		if meta.Kind != "Deployment" {
			continue
		}
		if found != nil {
			t.Fatal("kustomize renders more than one Deployment")
		}
		found = &appsv1.Deployment{}
		if err := yaml.UnmarshalStrict([]byte(doc), found); err != nil {
			t.Fatalf("the rendered Deployment does not decode strictly: %s", err)
		}
	}
	if found == nil {
		t.Fatal("kustomize renders no Deployment")
	}
	return found
}
