# syntax=docker/dockerfile:1
# omicsq worker image: static Go binaries on distroless, running as the nonroot user.
#
#   docker build --build-arg VERSION=0.1.0 -t ghcr.io/omicsq/omicsq:0.1.0 .
#
# /worker is the entrypoint (no subcommands; /worker --help lists every flag and environment
# variable). /enqueue (publishing, DLQ list/show/redrive) and /omics-sim (the sandbox API) are
# included for operators: kubectl exec or `kubectl run --command -- /enqueue ...`.
# scripts/check-image.sh checks this file and the static build without a Docker engine.

# 1.27.3, not the 1.26 the module declares: it fixes standard-library
# vulnerabilities that govulncheck reports for 1.26.8 (scripts/vulncheck.sh
# scans with this toolchain).
ARG GO_VERSION=1.27.3

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
# Dependencies first: this layer is reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# CGO off: a static binary needs no libc, so it runs on distroless/static (or scratch).
# -trimpath drops local paths; -s -w drops symbol and DWARF tables (smaller, nothing to leak).
# .git is not in the context (.dockerignore), hence -buildvcs=false.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} \
    go build -buildvcs=false -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/ ./cmd/worker ./cmd/enqueue ./cmd/omics-sim ./cmd/console

# distroless/static: CA certificates (TLS to Tencent Cloud and NATS) and tzdata, no shell,
# no package manager. The :nonroot tag already runs as 65532; USER repeats it numerically so
# runAsNonRoot can verify it without a passwd lookup.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="omicsq" \
      org.opencontainers.image.description="Queue-driven submitter for Tencent Cloud Omics RunApplication" \
      org.opencontainers.image.source="https://github.com/omicsq/omicsq" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/worker /worker
COPY --from=build /out/enqueue /enqueue
COPY --from=build /out/omics-sim /omics-sim
COPY --from=build /out/console /console
USER 65532:65532
# /metrics, /healthz, /readyz when METRICS_ADDR=0.0.0.0:9464 (the chart sets it).
EXPOSE 9464
ENTRYPOINT ["/worker"]
