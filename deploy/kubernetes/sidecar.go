// Package kubernetes reads the llmusage sidecar out of the example
// manifests of this directory, for the injector (llmusage inject): the
// examples and the injected pods share one definition of the sidecar's
// image, arguments, environment, ports, probes, resources, security
// context and volumes, so that they cannot drift apart.
package kubernetes

import (
	_ "embed"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

var (
	//go:embed deployment.yaml
	nativeDeployment []byte
	//go:embed classic-sidecar/deployment.yaml
	classicDeployment []byte
	//go:embed components/redis/sidecar-redis.yaml
	redisPatch []byte
)

// ContainerName is the name of the sidecar container in every manifest.
const ContainerName = "llmusage"

// Sidecar is the llmusage sidecar of one example Deployment.
type Sidecar struct {
	// Native is true for the native sidecar (an init container with
	// restartPolicy Always), false for the classic one (a regular
	// container).
	Native bool
	// Container is the llmusage container as the example defines it.
	Container corev1.Container
	// Volumes are the pod volumes the container mounts.
	Volumes []corev1.Volume
	// TerminationGracePeriodSeconds is the example pod's grace period,
	// longer than the sidecar's --shutdown-timeout.
	TerminationGracePeriodSeconds int64
	// AppEnv is the environment the example gives its application
	// container to reach the sidecar (LLMUSAGE_URL).
	AppEnv []corev1.EnvVar
	// RedisEnv is the environment the Redis component
	// (components/redis) adds to the sidecar.
	RedisEnv []corev1.EnvVar
}

// Native returns the sidecar of deployment.yaml.
func Native() (*Sidecar, error) { return load("deployment.yaml", nativeDeployment, true) }

// Classic returns the sidecar of classic-sidecar/deployment.yaml.
func Classic() (*Sidecar, error) {
	return load("classic-sidecar/deployment.yaml", classicDeployment, false)
}

func load(name string, raw []byte, native bool) (*Sidecar, error) {
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict(raw, &d); err != nil {
		return nil, fmt.Errorf("cannot decode %s: %w", name, err)
	}
	spec := d.Spec.Template.Spec
	s := &Sidecar{Native: native, TerminationGracePeriodSeconds: 30}
	if spec.TerminationGracePeriodSeconds != nil {
		s.TerminationGracePeriodSeconds = *spec.TerminationGracePeriodSeconds
	}
	where := spec.Containers
	if native {
		where = spec.InitContainers
	}
	found := false
	for _, c := range where {
		if c.Name == ContainerName {
			s.Container, found = *c.DeepCopy(), true
		}
	}
	if !found {
		return nil, fmt.Errorf("cannot find the %s container in %s", ContainerName, name)
	}
	for _, m := range s.Container.VolumeMounts {
		v := volume(spec.Volumes, m.Name)
		if v == nil {
			return nil, fmt.Errorf("cannot find the volume %s that %s mounts in %s", m.Name, ContainerName, name)
		}
		s.Volumes = append(s.Volumes, *v.DeepCopy())
	}
	for _, c := range spec.Containers {
		if c.Name == ContainerName {
			continue
		}
		for _, e := range c.Env {
			if strings.HasPrefix(e.Name, "LLMUSAGE_") {
				s.AppEnv = append(s.AppEnv, *e.DeepCopy())
			}
		}
		break // the first application container is the example
	}
	var patch appsv1.Deployment
	if err := yaml.UnmarshalStrict(redisPatch, &patch); err != nil {
		return nil, fmt.Errorf("cannot decode components/redis/sidecar-redis.yaml: %w", err)
	}
	for _, c := range patch.Spec.Template.Spec.InitContainers {
		if c.Name == ContainerName {
			for _, e := range c.Env {
				s.RedisEnv = append(s.RedisEnv, *e.DeepCopy())
			}
		}
	}
	if len(s.RedisEnv) == 0 {
		return nil, fmt.Errorf("cannot find the %s environment in components/redis/sidecar-redis.yaml", ContainerName)
	}
	return s, nil
}

func volume(vs []corev1.Volume, name string) *corev1.Volume {
	for i := range vs {
		if vs[i].Name == name {
			return &vs[i]
		}
	}
	return nil
}
