# The three Kubeloop images, one per component, from this one file:
#   kubeloop-operator  the kopf operator (`kubeloop operator`) and its Alertmanager receiver;
#                      kopf and the Kubernetes client (no scikit-learn, no onnxruntime)
#   kubeloop-trainer   `kubeloop snapshot` and `kubeloop train`, for snapshot and training Jobs;
#                      scikit-learn, XGBoost (xgboost-cpu), LightGBM, skl2onnx, onnxmltools,
#                      onnxruntime, pandas, pyarrow (no kopf); libgomp1 for LightGBM
#   kubeloop-serving   `kubeloop serve`, the inference server of serving pods;
#                      FastAPI, uvicorn, onnxruntime (no scikit-learn, no kopf)
# Build from the repository root, naming the component:
#   docker build --build-arg COMPONENT=serving -t kubeloop-serving .
# (`make images` builds all three, also without a registry or package index.)
#
# Each installs the `kubeloop` distribution with its component's extra and the `cloud` extra
# (s3fs, gcsfs, adlfs: every component reads or writes the artifact store), nothing else. The wheel
# holds the package folders that are present (pyproject.toml) and the build copies only
# core/ and the component's folder, so no other component and no devcluster tooling.
# Runs as uid/gid 10001 (the Pod securityContext the operator writes) and needs no
# writable path but /tmp, so it works with readOnlyRootFilesystem and an emptyDir on /tmp.
ARG BASE_IMAGE=python:3.11-slim-bookworm
# operator, trainer or serving: the folder copied, the pip extra and the final stage below.
ARG COMPONENT

FROM ${BASE_IMAGE} AS build
# "1": install from the wheels hack/images.sh made on the host (build/images/wheels),
# for builds that cannot reach the package index.
ARG PIP_OFFLINE=0
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/kubeloop
WORKDIR /src
# pyproject.toml always exists, so the copy succeeds when there are no wheels.
COPY pyproject.toml build/images/wheel[s] /wheels/
# constraints.txt: the versions the test suite passed with.
COPY pyproject.toml README.md constraints.txt ./
COPY core/kubeloop core/kubeloop
# Declared here, after the steps every image shares, so those stay cached across images.
ARG COMPONENT
RUN case "$COMPONENT" in operator|trainer|serving) ;; \
      *) echo "COMPONENT must be operator, trainer or serving, not '$COMPONENT'" >&2; exit 2 ;; \
    esac
COPY ${COMPONENT}/kubeloop ${COMPONENT}/kubeloop
RUN set -eu; \
    if [ "$PIP_OFFLINE" = 1 ]; then set -- --no-index --find-links /wheels; fi; \
    /opt/kubeloop/bin/pip install --quiet "$@" -c constraints.txt ".[$COMPONENT,cloud]"; \
    /opt/kubeloop/bin/pip uninstall --quiet --yes pip setuptools; \
    # What no image imports: the packages' own test suites, and kubernetes.aio, the
    # Kubernetes client's asyncio twin (68 MB; neither kopf nor Kubeloop uses it).
    find /opt/kubeloop/lib -depth -type d -name tests -path "*/site-packages/*" -exec rm -rf {} +; \
    rm -rf /opt/kubeloop/lib/python3*/site-packages/kubernetes/aio; \
    /opt/kubeloop/bin/python -m compileall -q -j 0 /opt/kubeloop/lib >/dev/null

FROM ${BASE_IMAGE} AS runtime
RUN groupadd --system --gid 10001 kubeloop \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin kubeloop
COPY --from=build /opt/kubeloop /opt/kubeloop
ENV PATH=/opt/kubeloop/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["kubeloop"]
ARG COMPONENT
# The image's version (hack/images.sh passes the one in pyproject.toml).
ARG VERSION=dev
LABEL org.opencontainers.image.title="kubeloop-${COMPONENT}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# What differs between the images: the default command and the ports.
FROM runtime AS operator
LABEL org.opencontainers.image.description="Kubeloop operator and Alertmanager receiver"
# liveness, metrics, Alertmanager webhook receiver
EXPOSE 8081 8090 8095
CMD ["operator", "--all-namespaces"]

FROM runtime AS trainer
LABEL org.opencontainers.image.description="Kubeloop dataset snapshots and training runs"
# LightGBM links the system's OpenMP runtime, libgomp1 (xgboost-cpu and scikit-learn bundle
# their own). hack/images.sh's local base has it already; a python:*-slim base gets it here.
USER root
RUN if ! ldconfig -p | grep -q 'libgomp\.so\.1'; then \
      apt-get update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libgomp1 \
      && rm -rf /var/lib/apt/lists/*; \
    fi
USER 10001:10001
CMD ["train", "--help"]

FROM runtime AS serving
LABEL org.opencontainers.image.description="Kubeloop ONNX inference server"
EXPOSE 8080
CMD ["serve", "--help"]

FROM ${COMPONENT}
