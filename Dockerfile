# meshgate: one image for every role (control, webhook, the injected sidecar and its iptables init
# container, demo-app). Build with scripts/image; see "Container image" in the README.
#
# Debian's own python3 (3.11 in bookworm) instead of python:3.11-slim: the venv built in the first
# stage points at /usr/bin/python3, which the runtime stage installs from the same Debian release.
# Pin the base by digest for reproducible builds: --build-arg BASE_IMAGE=docker.io/library/debian@sha256:...
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/meshgate
WORKDIR /src
# Dependencies first, from pyproject.toml alone: a code change does not re-resolve them.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        > /tmp/requirements.txt \
    && /opt/meshgate/bin/pip install --only-binary=:all: -r /tmp/requirements.txt
# The package layout maps proto/meshgate, sidecar/ and control/ onto the import root `meshgate`
# (pyproject.toml [tool.setuptools]); README.md is the project's readme.
COPY README.md ./
COPY proto/meshgate ./proto/meshgate
COPY sidecar ./sidecar
COPY control ./control
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/meshgate/bin/pip wheel --no-deps --wheel-dir /dist . \
    && /opt/meshgate/bin/pip install --no-index --no-deps /dist/meshgate-*.whl \
    && /opt/meshgate/bin/pip check \
    && /opt/meshgate/bin/pip uninstall -y pip setuptools

FROM ${BASE_IMAGE} AS runtime
# The init container runs `meshgate iptables`, which calls iptables (control/iptables.py). Debian's
# default is the nf_tables backend (iptables-nft), right for current nodes; build with
# --build-arg IPTABLES_BACKEND=legacy for nodes whose kernels only have the legacy ip_tables modules.
ARG IPTABLES_BACKEND=nft
# uid/gid 1337: control/inject.py runs the sidecar as PROXY_UID = 1337 and the init container
# exempts that uid's traffic from capture (--proxy-uid); tests/test_image.py keeps them in step.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 \
        iptables \
        ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && update-alternatives --set iptables "/usr/sbin/iptables-${IPTABLES_BACKEND}" \
    && update-alternatives --set ip6tables "/usr/sbin/ip6tables-${IPTABLES_BACKEND}" \
    && groupadd --gid 1337 meshgate \
    && useradd --uid 1337 --gid 1337 --no-create-home \
        --home-dir /var/lib/meshgate --shell /usr/sbin/nologin meshgate \
    && install -d -o 1337 -g 1337 -m 0750 /var/lib/meshgate
COPY --from=build /opt/meshgate /opt/meshgate
ENV PATH=/opt/meshgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

ARG BASE_IMAGE
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="meshgate" \
      org.opencontainers.image.description="API-gateway features as a per-pod service-mesh sidecar" \
      org.opencontainers.image.source="https://github.com/meshgate/meshgate" \
      org.opencontainers.image.url="https://github.com/meshgate/meshgate" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# sidecar: 15001 proxy, 15000 admin, 15002 gRPC; control: 7070; webhook: 8443
EXPOSE 15000 15001 15002 7070 8443
WORKDIR /var/lib/meshgate
# Numeric, so that Kubernetes can check runAsNonRoot without a runAsUser.
USER 1337:1337
ENTRYPOINT ["meshgate"]
CMD ["--help"]
