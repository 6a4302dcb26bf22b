// Package inject is llmusage inject: a mutating admission webhook that
// adds the llmusage sidecar to pods, as deploy/kubernetes/deployment.yaml
// defines it (native) or classic-sidecar/deployment.yaml (classic).
//
// Two paths, one per webhook of the MutatingWebhookConfiguration:
//
//   - POST /mutate: the webhook whose namespaceSelector picks the
//     namespaces labelled llmusage.io/inject=enabled. Every pod is
//     injected unless annotated llmusage.io/inject: "false".
//   - POST /mutate/annotated: the webhook of every other namespace. Only
//     pods annotated llmusage.io/inject: "true" are injected.
//
// The injector never refuses a pod: a review it cannot handle, or an
// annotation it cannot use, is answered allowed, with a warning.
package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/llmusage/llmusage/deploy/kubernetes"
)

// MaxBodyBytes bounds an AdmissionReview: the API server's own limit on
// an object is 3 MiB, and a review carries it once for a CREATE.
const MaxBodyBytes = 8 << 20

// Options configure an Injector.
type Options struct {
	// Defaults are the settings of a pod that has no annotation to
	// override them.
	Defaults Settings
	// Version marks injected pods (llmusage.io/injected).
	Version string
	// Logger logs every decision at debug, and problems at warn.
	Logger *slog.Logger
	// Registerer takes the llmusage_inject_* metrics.
	Registerer prometheus.Registerer
}

// Injector answers AdmissionReviews of pods.
type Injector struct {
	native, classic *kubernetes.Sidecar
	defaults        Settings
	version         string
	logger          *slog.Logger
	m               *metrics
}

// New loads the sidecars of the example manifests and checks the defaults.
func New(opts Options) (*Injector, error) {
	native, err := kubernetes.Native()
	if err != nil {
		return nil, err
	}
	classic, err := kubernetes.Classic()
	if err != nil {
		return nil, err
	}
	d := opts.Defaults
	if d.Mode == "" {
		d.Mode = ModeNative
	}
	d = d.resolve(&native.Container)
	if err := d.Validate(); err != nil {
		return nil, err
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registerer == nil {
		opts.Registerer = prometheus.NewRegistry()
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	return &Injector{native: native, classic: classic, defaults: d, version: opts.Version, logger: opts.Logger, m: m}, nil
}

// Register adds the webhook's routes to mux: POST /mutate and POST
// /mutate/annotated.
func (in *Injector) Register(mux *http.ServeMux) {
	mux.Handle("/mutate", in.handler(true))
	mux.Handle("/mutate/annotated", in.handler(false))
}

func (in *Injector) handler(namespaceSelected bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		o, uid, review, status, err := in.serve(w, r, namespaceSelected)
		if err != nil {
			o = outcome{result: resultError, reason: reasonBadRequest}
			in.logger.Warn("bad admission request", "remote", r.RemoteAddr, "path", r.URL.Path, "err", err)
			writeJSON(w, status, map[string]string{"error": err.Error()})
		} else {
			resp := &admissionv1.AdmissionResponse{UID: uid, Allowed: true, Warnings: o.warnings}
			if len(o.patch) > 0 {
				patch, err := json.Marshal(o.patch)
				if err != nil {
					// Cannot happen with these types; never block the pod.
					o = outcome{result: resultError, reason: reasonRender, warnings: []string{"llmusage injector: cannot encode the patch: nothing injected"}}
					resp.Warnings = o.warnings
				} else {
					pt := admissionv1.PatchTypeJSONPatch
					resp.Patch, resp.PatchType = patch, &pt
				}
			}
			review.Request, review.Response = nil, resp
			writeJSON(w, http.StatusOK, &review.AdmissionReview)
		}
		in.m.requests.WithLabelValues(o.result, o.reason).Inc()
		in.m.duration.Observe(time.Since(start).Seconds())
		for _, a := range o.invalid {
			in.m.invalid.WithLabelValues(a).Inc()
		}
		level := slog.LevelDebug
		if o.result == resultError || len(o.invalid) > 0 {
			level = slog.LevelWarn
		}
		in.logger.Log(r.Context(), level, "admission review", "uid", string(uid), "result", o.result, "reason", o.reason,
			"namespace", review.namespace(), "pod", review.pod(), "warnings", o.warnings)
	})
}

// reviewOut is the AdmissionReview answered; it remembers what the log
// names of the request.
type reviewOut struct {
	admissionv1.AdmissionReview
	ns, name string
}

func (r *reviewOut) namespace() string { return r.ns }
func (r *reviewOut) pod() string       { return r.name }

// serve reads and decides on one review; an error is the client's, and
// is answered with status.
func (in *Injector) serve(w http.ResponseWriter, r *http.Request, namespaceSelected bool) (outcome, types.UID, *reviewOut, int, error) {
	out := &reviewOut{}
	if r.Method != http.MethodPost {
		return outcome{}, "", out, http.StatusMethodNotAllowed, fmt.Errorf("cannot %s %s: POST an admission.k8s.io/v1 AdmissionReview", r.Method, r.URL.Path)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return outcome{}, "", out, http.StatusRequestEntityTooLarge, fmt.Errorf("cannot read the AdmissionReview: larger than %d bytes", MaxBodyBytes)
		}
		return outcome{}, "", out, http.StatusBadRequest, fmt.Errorf("cannot read the AdmissionReview: %w", err)
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		return outcome{}, "", out, http.StatusBadRequest, fmt.Errorf("cannot decode the AdmissionReview: %w", err)
	}
	if review.APIVersion != admissionv1.SchemeGroupVersion.String() || review.Kind != "AdmissionReview" {
		return outcome{}, "", out, http.StatusBadRequest, fmt.Errorf("cannot handle apiVersion %q kind %q: want admission.k8s.io/v1 AdmissionReview", review.APIVersion, review.Kind)
	}
	if review.Request == nil || review.Request.UID == "" {
		return outcome{}, "", out, http.StatusBadRequest, fmt.Errorf("cannot handle an AdmissionReview without a request and its uid")
	}
	out.AdmissionReview = review
	out.ns, out.name = review.Request.Namespace, review.Request.Name
	return in.admit(review.Request, namespaceSelected), review.Request.UID, out, http.StatusOK, nil
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
