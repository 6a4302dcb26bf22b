package kubernetes

import (
	"encoding/json"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestSidecars checks that both examples define the same sidecar, but for
// where it runs, and that what the injector needs of them is there.
func TestSidecars(t *testing.T) {
	native, err := Native()
	if err != nil {
		t.Fatal(err)
	}
	classic, err := Classic()
	if err != nil {
		t.Fatal(err)
	}
	if !native.Native || classic.Native {
		t.Fatal("Native and Classic are mixed up")
	}
	if p := native.Container.RestartPolicy; p == nil || *p != corev1.ContainerRestartPolicyAlways {
		t.Fatalf("the native sidecar's restartPolicy is %v, want Always", p)
	}
	if classic.Container.RestartPolicy != nil {
		t.Fatal("the classic sidecar has a restartPolicy")
	}
	n := native.Container.DeepCopy()
	n.RestartPolicy = nil
	if a, b := js(t, n), js(t, classic.Container); a != b {
		t.Fatalf("the two examples' sidecars differ:\nnative  %s\nclassic %s", a, b)
	}
	if a, b := js(t, native.Volumes), js(t, classic.Volumes); a != b {
		t.Fatalf("the two examples' volumes differ:\nnative  %s\nclassic %s", a, b)
	}
	if len(native.Volumes) != 2 || native.TerminationGracePeriodSeconds != 30 || classic.TerminationGracePeriodSeconds != 30 {
		t.Fatalf("volumes %d, grace %d/%d", len(native.Volumes), native.TerminationGracePeriodSeconds, classic.TerminationGracePeriodSeconds)
	}
	if len(native.AppEnv) != 1 || native.AppEnv[0].Name != "LLMUSAGE_URL" {
		t.Fatalf("app env %+v, want LLMUSAGE_URL", native.AppEnv)
	}
	if native.RedisEnv[0].Name != "LLMUSAGE_REDIS_URL" || native.RedisEnv[0].ValueFrom.SecretKeyRef.Name != "llmusage-redis" {
		t.Fatalf("redis env %+v", native.RedisEnv)
	}
}

func js(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
