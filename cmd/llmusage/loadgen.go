package main

import (
	"context"
	"fmt"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"github.com/llmusage/llmusage/collector"
	"github.com/llmusage/llmusage/internal/cli"
	"github.com/llmusage/llmusage/loadgen"
)

func loadgenCommand() *cli.Command {
	return &cli.Command{
		Name:         "loadgen",
		Usage:        "drive a running sidecar with records or checks and report throughput and latency",
		OnUsageError: usageError,
		Flags: []cli.Flag{
			stringFlag("target", "http://127.0.0.1:9470", "the sidecar's API: http://host:port or unix:/path/to/socket"),
			stringFlag("mode", "record", "record (one record per request), batch (--batch-size records) or check"),
			intFlag("connections", 8, "concurrent connections"),
			durationFlag("duration", 10*time.Second, "how long to drive load"),
			intFlag("batch-size", 100, "records per request in batch mode"),
			intFlag("users", 10_000, "distinct users, Zipf-distributed"),
			&cli.Float64Flag{Name: "rate", Usage: "requests per second in all (open loop); 0 sends as fast as answers come", EnvVars: envVars("rate")},
			boolFlag("json", false, "print the result as JSON"),
			stringFlag("auth-token-file", "", "send the token in this file as Authorization: Bearer"),
			stringFlag("serve-baseline", "", "serve the bare net/http baseline on this address instead of driving load"),
		},
		Action: func(c *cli.Context) error {
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			if addr := c.String("serve-baseline"); addr != "" {
				return serveBaseline(ctx, addr)
			}
			o := loadgen.Options{
				Target: c.String("target"), Mode: c.String("mode"), Connections: c.Int("connections"),
				Duration: c.Duration("duration"), BatchSize: c.Int("batch-size"), Users: c.Int("users"), Rate: c.Float64("rate"),
			}
			if f := c.String("auth-token-file"); f != "" {
				var err error
				if o.Token, err = collector.LoadToken(f); err != nil {
					return err
				}
			}
			r, err := loadgen.Run(ctx, o)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				fmt.Fprintln(c.App.Writer, r.JSON())
			} else {
				fmt.Fprint(c.App.Writer, r.Text())
			}
			return nil
		},
	}
}

func serveBaseline(ctx context.Context, addr string) error {
	ln, err := listen(addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: loadgen.BaselineHandler(), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 120 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return fmt.Errorf("cannot serve the baseline: %w", err)
	}
	return nil
}
