#!/usr/bin/env bash
# Wheels for what a bare GPU node lacks and the seed row of bench_train_step.py needs
# (albumentations and its dependencies, the versions requirements.txt resolves to), for
# CPython 3.12 on x86_64 Linux, into the ignored folder .whl/ at the repository root.
# benchmarks/run_gpu_checks.sh installs them into its scratch folder when .whl/ holds any;
# without them it measures everything but the seed row. Needs pip and PyPI (run it here, not
# on the node); about 10 MB.
#
#   bash benchmarks/make_wheels.sh [PYTHON_VERSION]     # default 3.12
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION="${1:-3.12}"
PACKAGES=(albumentations==2.0.8 albucore==0.0.24 pydantic==2.13.4 pydantic-core==2.46.4
          annotated-types==0.7.0 typing-inspection==0.4.2 stringzilla==5.3.2 simsimd==6.5.16)
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$tag")
done
rm -rf .whl
mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --implementation cp "${PLATFORMS[@]}" -d .whl "${PACKAGES[@]}"
ls -la .whl
