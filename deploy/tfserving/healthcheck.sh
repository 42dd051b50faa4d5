#!/usr/bin/env bash
# Healthy only when TF Serving reports a version of MODEL as AVAILABLE (loaded and warmed up).
#
#   healthcheck.sh MODEL [REST_PORT]
#
# The official tensorflow/serving images have bash but neither curl nor wget, so this speaks
# HTTP/1.0 over bash's /dev/tcp to the REST model-status API (GET /v1/models/MODEL).
# Exit 0: AVAILABLE. Exit 1: loading, failed, unknown model, or the server is not answering.
set -u
model="${1:?usage: healthcheck.sh MODEL [REST_PORT]}"
port="${2:-8501}"
host="${TFSERVING_HEALTH_HOST:-127.0.0.1}"

exec 3<>"/dev/tcp/${host}/${port}" 2>/dev/null || { echo "no answer on ${host}:${port}"; exit 1; }
printf 'GET /v1/models/%s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "${model}" "${host}" >&3
reply="$(timeout 4 cat <&3)"
exec 3<&-

status_line="${reply%%$'\r'*}"
case "${status_line}" in
  "HTTP/1."?" 200"*) ;;
  *) echo "model ${model}: ${status_line:-no reply}"; exit 1 ;;
esac
# Body: {"model_version_status": [{"version": "1", "state": "AVAILABLE", ...}]}
if [[ "${reply}" =~ \"state\"[[:space:]]*:[[:space:]]*\"AVAILABLE\" ]]; then
  exit 0
fi
echo "model ${model}: no version AVAILABLE yet"
exit 1
