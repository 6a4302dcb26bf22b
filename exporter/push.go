package exporter

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/prometheus/common/expfmt"
)

// StartPush pushes every metric family of the registry to url every
// interval, in the Prometheus text format, until ctx is cancelled. It is
// meant for VictoriaMetrics' /api/v1/import/prometheus or vmagent, where
// nothing scrapes the pod.
func (e *Exporter) StartPush(ctx context.Context, url string, interval time.Duration, logger *slog.Logger) error {
	opts := &metrics.PushOptions{
		Method: "POST",
		LogErr: func(format string, args ...any) {
			logger.Warn("cannot push metrics", "error", fmt.Sprintf(format, args...))
		},
	}
	if err := metrics.InitPushExtWithOptions(ctx, url, interval, e.WriteText, opts); err != nil {
		return fmt.Errorf("cannot push metrics to --metrics-push-url: %w", err)
	}
	return nil
}

// WriteText writes the registry in the Prometheus text format.
func (e *Exporter) WriteText(w io.Writer) {
	mfs, err := e.reg.Gather()
	if err != nil && len(mfs) == 0 {
		return
	}
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		_ = enc.Encode(mf)
	}
}
