package exporter

import "github.com/prometheus/client_golang/prometheus"

func newBuildInfo(version, revision, goVersion string) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "llmusage_build_info",
		Help:        "A metric with a constant '1' value labelled by the version, revision and Go version llmusage was built from.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": goVersion},
	})
	g.Set(1)
	return g
}
