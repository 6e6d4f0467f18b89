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
# git for clones, CA certificates for registries, bubblewrap, util-linux and slirp4netns for the
# sandbox layers a host allows, Python with venv for MkDocs sites (tar and gzip, which pack the
# build caches kept in the bucket, are in the base image). On Fargate (no namespaces) the task is the outer boundary, and
# inside it the repository's commands still run as another user (nobody) than the builder, with
# no capabilities and no way to read the builder's environment or memory.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates bubblewrap util-linux \
       slirp4netns iproute2 python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && corepack enable
COPY --from=build /src/target/release/gitdeploy /usr/local/bin/gitdeploy
ENV GITDEPLOY_WORK_ROOT=/tmp/gitdeploy \
    COREPACK_ENABLE_DOWNLOAD_PROMPT=0
# Root inside the task, so that the builder can drop the repository's commands to another user
# (as the same user, they could read the builder's credentials); the builder itself is
# undumpable. The task definition grants no extra capabilities.
# hadolint ignore=DL3002
USER 0
ENTRYPOINT ["/usr/local/bin/gitdeploy"]
CMD ["build-task"]
