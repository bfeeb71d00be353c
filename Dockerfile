# rankd's container image: built in the CUDA devel image, run on the CUDA
# runtime image, as a non-root user, on a read-only root filesystem.
#
#   docker build -t rankd:0.1.0 --build-arg GIT_REV=$(git rev-parse --short=12 HEAD) .
#   docker run --rm rankd:0.1.0 version
#
# Not built on the development machine (it has no Docker): this file was
# written by reading and its steps check themselves where they can (the
# binary starts in the runtime stage with every library it needs). See
# docs/operations.md, "The image".
#
# Ubuntu 24.04 is the CUDA images' base: its libraries (librdkafka 2.3,
# hiredis 1.2, gcc 13) are newer than the Debian 12 ones rankd is developed
# against (librdkafka 2.0.2, hiredis 0.14.1, gcc 12); rankd uses only APIs
# that both have.
ARG CUDA_VERSION=13.0.0
ARG UBUNTU=ubuntu24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential pkg-config \
      libjansson-dev libyaml-dev librdkafka-dev libhiredis-dev libmicrohttpd-dev libopenblas-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# .git is not in the build context (.dockerignore): the revision rankd
# reports (`rankd version`) comes in as an argument.
ARG GIT_REV=unknown
# nvcc is on the devel image's PATH, so this is the CUDA build (sm_90a and
# sm_80 code plus compute_80 PTX; the CUDA runtime linked statically).
RUN make -j"$(nproc)" WITH_CUDA=1 GIT_REV="${GIT_REV}" build/rankd \
 && build/rankd version

# The runtime image: rankd links the CUDA runtime statically and the driver
# (libcuda) comes from the NVIDIA container toolkit at run time, so the
# runtime image's CUDA libraries are not needed by rankd itself; it is the
# base that the toolkit and the GPU operator expect.
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      librdkafka1 libhiredis1.1.0 libyaml-0-2 libjansson4 libmicrohttpd12t64 libopenblas0-pthread \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 rankd \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin rankd
COPY --from=build /src/build/rankd /usr/local/bin/rankd
# The embedded default, for a plain `docker run`; Kubernetes mounts the
# chart's ConfigMap over /etc/rankd.
COPY configs/default.yaml /etc/rankd/rankd.yaml
# Fails the build when a shared library is missing, rather than the pod at
# its first start.
RUN if ldd /usr/local/bin/rankd | grep 'not found'; then exit 1; fi \
 && /usr/local/bin/rankd version \
 && /usr/local/bin/rankd check-config /etc/rankd/rankd.yaml >/dev/null
# The only writes: /tmp (the CUDA JIT cache for GPUs newer than the
# image's code, CUDA_CACHE_PATH) and mounted volumes. Numeric user, so
# that Kubernetes' runAsNonRoot can verify it.
ENV CUDA_CACHE_PATH=/tmp/cuda-cache HOME=/tmp
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/rankd"]
CMD ["serve", "--config", "/etc/rankd/rankd.yaml"]
LABEL org.opencontainers.image.title="rankd" \
      org.opencontainers.image.description="Real-time recommendation service: Kafka in, Redis features, int8 transformer scoring on GPU or CPU"
