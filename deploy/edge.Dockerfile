# The edge image: `gitdeploy serve` (sites, API, dashboard, log streaming, metrics) with builds on
# ECS. Build from the repository root:  docker build -f deploy/edge.Dockerfile -t gitdeploy-edge .

FROM rust:1.95-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin gitdeploy \
    && mkdir -p /out/var/lib/gitdeploy

# glibc, CA certificates and nothing else; runs as an unprivileged user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/gitdeploy /usr/local/bin/gitdeploy
COPY deploy/gitdeploy.toml /etc/gitdeploy/gitdeploy.toml
# The data directory (run files, scratch), the user's own; a volume, so that ECS copies it (and
# its owner) into a task's bind mount and the root filesystem can stay read-only.
COPY --from=build --chown=65532:65532 /out/var/lib/gitdeploy /var/lib/gitdeploy
VOLUME ["/var/lib/gitdeploy"]
USER 65532
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/gitdeploy"]
CMD ["serve", "--config", "/etc/gitdeploy/gitdeploy.toml"]
