# ipipstack in a container: a static binary on distroless, as a non-root user.
#
#   docker build --build-arg VERSION="$(git describe --tags --always --dirty)" -t ipipstack .
#   docker run -d --name ipipstack --cap-drop ALL \
#     -v "$PWD/ipipstack.hcl:/etc/ipipstack/ipipstack.hcl:ro" \
#     -p 127.0.0.1:8080:8080 -p 4700:4700/udp ipipstack
#   docker kill --signal HUP ipipstack   # reload the file
#
# The file's status block must listen on 127.0.0.1:9100 (the default) for
# the health check; its host-side listeners must bind the container's
# address (0.0.0.0) to be published. Raw tunnels need CAP_NET_RAW, which
# Docker gives a non-root user only through file capabilities: run them
# with --cap-drop ALL --cap-add NET_RAW --user 0 (root inside the container,
# with that one capability). README.md, "Running in a container", has more.

# Build stage: the same build as `make build`, with its version stamping,
# linked statically (no cgo) so that it runs on an image without libc.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# VERSION is what `ipipstack version` reports; empty leaves the module's
# VCS information (absent without .git in the build context).
ARG VERSION=
RUN CGO_ENABLED=0 make build VERSION="$VERSION" && ./bin/ipipstack version

# Run stage: distroless static has no shell, no package manager, and a
# nonroot user (65532); ipipstack needs no CA certificates or libc.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/bin/ipipstack /usr/local/bin/ipipstack
USER nonroot:nonroot
# `ipipstack status` exits 0 when the process is ready (every keepalive
# peer up, every listener open), 3 when it answers but is not, 1 when it
# does not answer.
HEALTHCHECK --interval=30s --timeout=10s --start-period=15s --retries=3 \
  CMD ["/usr/local/bin/ipipstack", "status", "--addr", "127.0.0.1:9100", "--timeout", "5s"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ipipstack"]
CMD ["run", "-c", "/etc/ipipstack/ipipstack.hcl"]
