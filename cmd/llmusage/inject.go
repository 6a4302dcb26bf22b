package main

import (
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/llmusage/llmusage/inject"
	"github.com/llmusage/llmusage/internal/cli"
)

func injectCommand() *cli.Command {
	return &cli.Command{
		Name:         "inject",
		Usage:        "run the mutating admission webhook that adds the llmusage sidecar to pods (docs/kubernetes.md, Injection)",
		OnUsageError: usageError,
		Flags: concat(
			inCategory("Webhook",
				stringFlag("listen-address", ":8443", "address of the webhook (HTTPS): POST /mutate, /mutate/annotated, /healthz, /readyz"),
				stringFlag("metrics-address", ":9471", "address of /metrics, /healthz and /readyz (HTTP)"),
				stringFlag("tls-cert-file", "", "PEM certificate (chain) the webhook serves; reloaded when it changes"),
				stringFlag("tls-key-file", "", "PEM private key of --tls-cert-file; reloaded with it"),
				durationFlag("tls-reload-interval", 10*time.Second, "time between checks of the TLS files, besides each TLS handshake's"),
				durationFlag("shutdown-timeout", 10*time.Second, "time allowed to finish in-flight reviews on SIGTERM"),
				stringFlag("log-format", "text", "log format: text or json"),
				stringFlag("log-level", "info", "log level: debug (every decision), info, warn or error"),
			),
			inCategory("Sidecar defaults (each pod's annotations override them)",
				stringFlag("sidecar-mode", inject.ModeNative, "native (an init container with restartPolicy Always) or classic"),
				stringFlag("sidecar-image", "", "the sidecar's image; empty: deploy/kubernetes/deployment.yaml's"),
				stringFlag("sidecar-cpu-request", "", "the sidecar's CPU request; empty: the example Deployment's"),
				stringFlag("sidecar-cpu-limit", "", "the sidecar's CPU limit; empty: the example Deployment's (none)"),
				stringFlag("sidecar-memory-request", "", "the sidecar's memory request; empty: the example Deployment's"),
				stringFlag("sidecar-memory-limit", "", "the sidecar's memory limit; empty: the example Deployment's"),
				stringFlag("limits-configmap", "", "ConfigMap of the limits file (key limits.yaml) in the pod's namespace"),
				stringFlag("database-secret", "", "Secret of the database URL (key url) in the pod's namespace"),
				stringFlag("redis-secret", "", "Secret of a Redis URL (key url) the sidecars share limits through"),
				&cli.StringSliceFlag{Name: "sidecar-args", EnvVars: envVars("sidecar-args"),
					Usage: "flag added to the sidecar's serve arguments (repeatable)"},
			),
		),
		Action: func(c *cli.Context) error {
			logger, err := newLogger(c.String("log-format"), c.String("log-level"))
			if err != nil {
				return err
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			build := prometheus.NewGauge(prometheus.GaugeOpts{
				Name:        "llmusage_build_info",
				Help:        "A metric with a constant '1' value labelled by the version, revision and Go version llmusage was built from.",
				ConstLabels: prometheus.Labels{"version": version, "revision": revision(), "goversion": runtime.Version()},
			})
			build.Set(1)
			reg.MustRegister(build)
			srv, err := inject.NewServer(inject.ServerConfig{
				ListenAddress:   c.String("listen-address"),
				MetricsAddress:  c.String("metrics-address"),
				CertFile:        c.String("tls-cert-file"),
				KeyFile:         c.String("tls-key-file"),
				ReloadInterval:  c.Duration("tls-reload-interval"),
				ShutdownTimeout: c.Duration("shutdown-timeout"),
				Injector: inject.Options{
					Defaults: inject.Settings{
						Mode:            c.String("sidecar-mode"),
						Image:           c.String("sidecar-image"),
						CPURequest:      c.String("sidecar-cpu-request"),
						CPULimit:        c.String("sidecar-cpu-limit"),
						MemoryRequest:   c.String("sidecar-memory-request"),
						MemoryLimit:     c.String("sidecar-memory-limit"),
						LimitsConfigMap: c.String("limits-configmap"),
						DatabaseSecret:  c.String("database-secret"),
						RedisSecret:     c.String("redis-secret"),
						Args:            c.StringSlice("sidecar-args"),
					},
					Version:    version,
					Logger:     logger,
					Registerer: reg,
				},
				Gatherer: reg,
			})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return srv.Run(ctx)
		},
	}
}
