# The vkube image: the vkube binary plus the pinned etcd, kube-apiserver and
# kube-controller-manager it supervises, running as non-root. The component versions and build
# recipe are the ones hack/ uses (hack/versions.sh, hack/build-components.sh), so the image and
# the test harness run the same binaries.
#
# What the image holds and how it runs is listed once, in hack/image-contents.txt: hack/images.sh
# builds the same image from that list without Docker (for the real test node), and
# `hack/images.sh check` (run by hack/test.sh) fails when this file and the list disagree.
#
#   docker build -t vkube:dev .

FROM golang:1.26-bookworm AS components
WORKDIR /src
COPY hack/versions.sh hack/build-components.sh hack/
RUN VKUBE_CACHE=/cache VKUBE_BIN=/out bash hack/build-components.sh

FROM rust:1.95-bookworm AS vkube
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY e2e e2e
RUN cargo build --release --locked --bin vkube

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 65532 --user-group --home-dir /var/lib/vkube --create-home vkube
COPY --from=components /out/etcd /out/kube-apiserver /out/kube-controller-manager /usr/local/bin/
COPY --from=vkube /src/target/release/vkube /usr/local/bin/vkube
USER 65532:65532
WORKDIR /var/lib/vkube
ENV VKUBE_BIN_DIR=/usr/local/bin VKUBE_DATA_DIR=/var/lib/vkube/data VKUBE_LISTEN=0.0.0.0:8443
EXPOSE 8443
ENTRYPOINT ["vkube"]
CMD ["serve"]
