package inject

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// certReloader serves the key pair of two files and loads it again when
// either changes: a Secret mounted in the pod is updated by the kubelet
// by a symlink swap, which os.Stat sees through (another file, another
// modification time), as cert-manager's renewals do. Every TLS handshake
// checks the files (two stats), and so does a ticker, so that the expiry
// gauge follows a renewal between handshakes too. A pair that does not
// load (a key written before its certificate) keeps the old one in
// service until the next check.
type certReloader struct {
	certFile, keyFile string
	logger            *slog.Logger
	reloads           *prometheus.CounterVec

	mu       sync.Mutex
	cert     *tls.Certificate
	notAfter time.Time
	stats    [2]os.FileInfo
	pems     [2][]byte
	failed   bool
}

func newCertReloader(certFile, keyFile string, logger *slog.Logger, reg prometheus.Registerer) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, logger: logger,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmusage_inject_certificate_reloads_total",
			Help: "Times the serving certificate was loaded again after its files changed, by result (ok, error: the old one stays).",
		}, []string{"result"}),
	}
	r.reloads.WithLabelValues("ok")
	r.reloads.WithLabelValues("error")
	expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "llmusage_inject_certificate_expiry_timestamp_seconds",
		Help: "When the serving certificate in use expires (its NotAfter), in seconds since the epoch.",
	}, func() float64 {
		r.mu.Lock()
		defer r.mu.Unlock()
		return float64(r.notAfter.Unix())
	})
	if err := r.load(); err != nil {
		return nil, err
	}
	for _, c := range []prometheus.Collector{r.reloads, expiry} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("cannot register the certificate metrics: %w", err)
		}
	}
	return r, nil
}

// load reads the pair; it is in service only if it parses.
func (r *certReloader) load() error {
	var stats [2]os.FileInfo
	var pems [2][]byte
	for i, f := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return fmt.Errorf("cannot read the TLS files: %w", err)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("cannot read the TLS files: %w", err)
		}
		stats[i], pems[i] = fi, b
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats = stats
	if r.cert != nil && bytes.Equal(pems[0], r.pems[0]) && bytes.Equal(pems[1], r.pems[1]) {
		return nil // touched, not changed
	}
	cert, err := tls.X509KeyPair(pems[0], pems[1])
	if err != nil {
		return fmt.Errorf("cannot load the key pair of %s and %s: %w", r.certFile, r.keyFile, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return fmt.Errorf("cannot parse the certificate of %s: %w", r.certFile, err)
	}
	cert.Leaf = leaf
	first := r.cert == nil
	r.cert, r.notAfter, r.pems = &cert, leaf.NotAfter, pems
	if !first {
		r.reloads.WithLabelValues("ok").Inc()
		r.logger.Info("TLS certificate reloaded", "serial", leaf.SerialNumber.String(), "not_after", leaf.NotAfter)
	}
	return nil
}

// changed tells whether either file is another file, or another size or
// modification time, than when last loaded.
func (r *certReloader) changed() bool {
	r.mu.Lock()
	old := r.stats
	r.mu.Unlock()
	for i, f := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return true // load reports it
		}
		if old[i] == nil || !os.SameFile(fi, old[i]) || !fi.ModTime().Equal(old[i].ModTime()) || fi.Size() != old[i].Size() {
			return true
		}
	}
	return false
}

// check reloads the pair if its files changed; retry, from the ticker,
// also loads again a pair that failed to load (which may have been read
// halfway through an update).
func (r *certReloader) check(retry bool) {
	r.mu.Lock()
	failed := r.failed
	r.mu.Unlock()
	if !r.changed() && !(retry && failed) {
		return
	}
	err := r.load()
	r.mu.Lock()
	r.failed = err != nil
	r.mu.Unlock()
	if err != nil {
		r.reloads.WithLabelValues("error").Inc()
		r.logger.Warn("TLS certificate not reloaded: the one loaded before stays in service", "err", err)
		// Handshakes try again once the files change again; the
		// ticker at its next tick.
		r.remember()
	}
}

// remember records the files' current state, so that a pair that failed
// to load is tried again only once it changes.
func (r *certReloader) remember() {
	var stats [2]os.FileInfo
	for i, f := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return
		}
		stats[i] = fi
	}
	r.mu.Lock()
	r.stats = stats
	r.mu.Unlock()
}

// GetCertificate is tls.Config's.
func (r *certReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.check(false)
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cert, nil
}
