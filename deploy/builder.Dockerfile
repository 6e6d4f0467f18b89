# The builder image: `gitdeploy build-task` runs one build per ECS task. Build from the
# repository root:  docker build -f deploy/builder.Dockerfile -t gitdeploy-builder .
# It also runs `gitdeploy serve` with the local runner and `gitdeploy s3-server` in
# deploy/compose.yaml, since it carries what builds need (git, Node LTS with corepack).

FROM rust:1.95-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin gitdeploy

FROM node:20-bookworm-slim
# git for clones, CA certificates for registries, bubblewrap and util-linux for the sandbox
# layers that a host allows (on Fargate the task itself is the isolation boundary).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates bubblewrap util-linux \
    && rm -rf /var/lib/apt/lists/* \
    && corepack enable \
    && useradd --system --create-home --uid 10001 gitdeploy
COPY --from=build /src/target/release/gitdeploy /usr/local/bin/gitdeploy
ENV GITDEPLOY_WORK_ROOT=/tmp/gitdeploy \
    COREPACK_ENABLE_DOWNLOAD_PROMPT=0
USER 10001
ENTRYPOINT ["/usr/local/bin/gitdeploy"]
CMD ["build-task"]
