package otlp

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"strings"
	"time"

	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	_ "google.golang.org/grpc/encoding/gzip" // OTLP exporters may compress with gzip
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// GRPCServer returns a gRPC server of the OTLP trace service, for
// --otlp-grpc-address. A message is bounded as an HTTP body is (gRPC
// applies the bound after decompression too). With Options.Token, calls
// need it as "authorization: Bearer <token>".
func (r *Receiver) GRPCServer() *grpc.Server {
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(int(r.maxBodyBytes))}
	if r.token != "" {
		opts = append(opts, grpc.UnaryInterceptor(r.requireToken))
	}
	s := grpc.NewServer(opts...)
	ptraceotlp.RegisterGRPCServer(s, &grpcTraces{r: r})
	return s
}

// grpcTraces serves the trace service's Export.
type grpcTraces struct {
	ptraceotlp.UnimplementedGRPCServer
	// r takes the spans.
	r *Receiver
}

// Export answers as the OTLP/gRPC specification says: OK with a partial
// success, or UNAVAILABLE with a RetryInfo while the spool is full.
func (g *grpcTraces) Export(_ context.Context, req ptraceotlp.ExportRequest) (ptraceotlp.ExportResponse, error) {
	size := int64(sizer.TracesSize(req.Traces()))
	var resp ptraceotlp.ExportResponse
	err := errBusy
	if g.r.inflight.TryAcquire(size) {
		resp, err = g.r.Export(req.Traces())
		g.r.inflight.Release(size)
	}
	if err == nil {
		return resp, nil
	}
	if errors.Is(err, ErrUnavailable) || errors.Is(err, errBusy) {
		st, derr := status.New(codes.Unavailable, err.Error()).
			WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Second)})
		if derr != nil {
			return resp, status.Error(codes.Unavailable, err.Error())
		}
		return resp, st.Err()
	}
	return resp, status.Error(codes.Internal, err.Error())
}

// sizer measures a gRPC request as its protobuf encoding, as an HTTP
// body is measured.
var sizer ptrace.ProtoMarshaler

// requireToken refuses calls without the sidecar's token.
func (r *Receiver) requireToken(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	want := sha256.Sum256([]byte(r.token))
	var got string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if vs := md.Get("authorization"); len(vs) > 0 {
			got, ok = strings.CutPrefix(vs[0], "Bearer ")
			if !ok {
				got = ""
			}
		}
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
	if got == "" || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
		return nil, status.Error(codes.Unauthenticated, "cannot export without a valid authorization: Bearer token (--auth-token-file)")
	}
	return h(ctx, req)
}
