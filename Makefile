# The two commands a new machine needs: `make run` and `make test`.
GO ?= go

.PHONY: run test bench fault build

## run: build the binary, then run the sidecar in the foreground on its defaults, with the example limits file; ARGS adds flags (make run ARGS="--redis-url redis://localhost:6379"); kill -HUP reloads the limits file
run:
	exec env GO="$(GO)" ./scripts/run.sh $(ARGS)

## test: install and start what the tests need (promtool, PostgreSQL, etcd and a kube-apiserver built once from the Go module proxy, the npm SDKs of test/sdk), then run every test with the race detector
test:
	./scripts/test.sh

## bench: run every benchmark once, briefly, so that they keep compiling and running
bench:
	./scripts/bench.sh

## fault: budgets and limits exact through Redis, sidecar and Postgres faults (3 sidecars, real Redis and Postgres); kill -9 and Postgres outages under load, a full spool, a 1,000,000-user flood
fault:
	./scripts/fault.sh

## build: the binary ./llmusage (BIN=path for another), built as the Dockerfile builds it: static, stripped, without gRPC's /debug/requests tracing (whose html/template would make the linker keep every exported method; docs/benchmarks.md, Footprint)
BIN ?= llmusage
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
build:
	CGO_ENABLED=0 $(GO) build -tags grpcnotrace -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(BIN) ./cmd/llmusage
