# syntax=docker/dockerfile:1
# llmq images: small, static, non-root.
#
#   docker build -t llmq .                          # the llmq binary (worker, enqueue, fake-upstream, ...)
#   docker build --target asynqmon -t llmq-asynqmon .  # asynqmon with llmq's payload/result formatters
#
# No secret is ever copied in: the API key comes at run time from the
# environment or a Docker secret (LLMQ_API_KEY_FILE=/run/secrets/openai_api_key).

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS deps
WORKDIR /src
COPY go.mod go.sum ./
COPY deploy/go.mod deploy/go.sum ./deploy/
RUN --mount=type=cache,target=/go/pkg/mod go mod download && go -C deploy mod download
COPY . .
ENV CGO_ENABLED=0 GOOS=linux

FROM deps AS build-llmq
ARG VERSION=dev
ARG BUILD=unknown
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.build=${BUILD}" -o /out/llmq ./cmd/llmq

# deploy/ is its own module (compose-go, asynqmon stay out of the library's).
FROM deps AS build-asynqmon
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    go -C deploy build -trimpath -ldflags "-s -w" -o /out/llmq-asynqmon ./asynqmon

FROM gcr.io/distroless/static-debian12:nonroot AS asynqmon
COPY --from=build-asynqmon /out/llmq-asynqmon /llmq-asynqmon
USER nonroot:nonroot
EXPOSE 8080
ENTRYPOINT ["/llmq-asynqmon"]

# The default target comes last.
FROM gcr.io/distroless/static-debian12:nonroot AS llmq
COPY --from=build-llmq /out/llmq /llmq
USER nonroot:nonroot
# /metrics and /healthz of `llmq worker`.
EXPOSE 9464
ENTRYPOINT ["/llmq"]
CMD ["worker"]
