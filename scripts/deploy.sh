#!/usr/bin/env bash
# `make deploy REGISTRY=...`: deploy execmesh to the Kubernetes cluster of the current
# kubectl context, which must run Knative Serving and Eventing with the Kafka broker.
#   1. the namespace, and the Secret execmesh-services (mongodb-url, redis-url) you create;
#   2. every function with `func deploy` from its staged folder (scripts/stage_functions.py);
#   3. the Broker, Triggers and sources of eventing/ with kubectl.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
: "${REGISTRY:?set REGISTRY to the image registry func deploy pushes to}"
for tool in kubectl func; do
  command -v "$tool" >/dev/null || { echo "deploy: $tool is not installed" >&2; exit 1; }
done
kubectl get namespace execmesh >/dev/null 2>&1 || kubectl create namespace execmesh
kubectl -n execmesh get secret execmesh-services >/dev/null \
  || { echo "deploy: create the Secret execmesh-services (mongodb-url, redis-url) first" >&2; exit 1; }
"$ROOT/.venv/bin/python" "$ROOT/scripts/stage_functions.py" "$ROOT/build/functions" |
  while read -r staged; do
    func deploy --path "$staged" --registry "$REGISTRY"
  done
kubectl apply -f "$ROOT/functions/k8s_worker/rbac.yaml"
kubectl apply -f "$ROOT/eventing/broker.yaml" -f "$ROOT/eventing/sources" -f "$ROOT/eventing/triggers"
