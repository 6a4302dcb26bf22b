# llmusage: a static binary on distroless, running as non-root.
#   docker build -t llmusage:dev --build-arg VERSION=$(git describe --always) .
# cmd/llmusage/docker_test.go runs the build command below (the line after
# "# build:") to check that it yields a static binary that runs.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# grpcnotrace: gRPC without golang.org/x/net/trace, whose html/template
# would make the linker keep every exported method of every type (10 MB;
# docs/benchmarks.md, Footprint). `make build` builds the same way.
# build:
RUN CGO_ENABLED=0 go build -tags grpcnotrace -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/llmusage ./cmd/llmusage

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/llmusage /usr/local/bin/llmusage
# The spool and the embedded database; mount a volume here (the root
# filesystem can stay read-only).
VOLUME /var/lib/llmusage
WORKDIR /var/lib/llmusage
USER 65532:65532
EXPOSE 9470 9471
ENTRYPOINT ["/usr/local/bin/llmusage"]
CMD ["serve", "--listen-address=127.0.0.1:9470", "--metrics-address=:9471", "--data-dir=/var/lib/llmusage"]
