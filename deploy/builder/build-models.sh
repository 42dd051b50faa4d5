#!/usr/bin/env bash
# One-shot model export for docker compose / the Kubernetes Job. Idempotent: exits 0 at once
# when <MODEL_BASE>/<MODEL_NAME>/<MODEL_VERSION>/saved_model.pb already exists.
#
#   MODEL_NAME=demo      -> `resnet-serving demo --version MODEL_VERSION` (trains on the built-in
#                           offline data; MODEL_VERSION=2 rolls a new demo version)
#   MODEL_NAME=<other>   -> `resnet-serving build` (MODEL_ARCH, MODEL_WEIGHTS) + `export`
#                           (MODEL_VERSION, MODEL_PRECISION)
set -euo pipefail
: "${MODEL_BASE:=/models}" "${MODEL_NAME:=demo}" "${MODEL_VERSION:=1}"
: "${MODEL_ARCH:=resnet50}" "${MODEL_WEIGHTS:=imagenet}" "${MODEL_PRECISION:=float32}"

target="${MODEL_BASE}/${MODEL_NAME}/${MODEL_VERSION}"
if [[ -f "${target}/saved_model.pb" && -f "${MODEL_BASE}/models.config" ]]; then
  echo "build-models: ${target} exists; nothing to do"
  exit 0
fi

# An empty named volume takes the owner of /models from the image of each container created
# with it. docker-compose.yml mounts it with nocopy everywhere but here, so that owner is app
# (10001); a volume made otherwise (an older compose file) may not be ours: say how to fix it.
mkdir -p "${MODEL_BASE}" 2>/dev/null || true
if [[ ! -w "${MODEL_BASE}" ]]; then
  echo "build-models: ${MODEL_BASE} is not writable by uid $(id -u) (owner $(stat -c '%u:%g' "${MODEL_BASE}" 2>/dev/null || echo unknown))." >&2
  echo "  Give it to the builder: docker compose run --rm --user 0 --entrypoint chown builder 10001:10001 ${MODEL_BASE}" >&2
  echo "  (or remove the volume: docker compose down -v)" >&2
  exit 1
fi

if [[ "${MODEL_NAME}" == "demo" ]]; then
  resnet-serving demo --model-base "${MODEL_BASE}" --version "${MODEL_VERSION}"
else
  run_dir="$(mktemp -d)"
  trap 'rm -rf "${run_dir}"' EXIT
  resnet-serving build --arch "${MODEL_ARCH}" --weights "${MODEL_WEIGHTS}" --out "${run_dir}/run"
  resnet-serving export --run "${run_dir}/run" --model-base "${MODEL_BASE}" \
    --name "${MODEL_NAME}" --version "${MODEL_VERSION}" --precision "${MODEL_PRECISION}"
fi
test -f "${target}/saved_model.pb" || { echo "build-models: ${target} was not written" >&2; exit 1; }
echo "build-models: exported ${target}"
