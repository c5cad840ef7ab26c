#!/usr/bin/env bash
# OpenVINO XAI 1.1.0 in an environment of its own, for benchmarks/reference_rise.py (issue 24).
# It pins OpenVINO 2024.4 and numpy 1.x, which camcli's environment cannot hold. The install runs
# outside the repository: inside it, uv applies camcli's pyproject constraints (numpy 2.x) and
# refuses the package. Usage: bash benchmarks/ovxai_env.sh [/path/to/venv]
set -euo pipefail
venv="$(realpath -m "${1:-/work/envs/ovxai}")"
cd "$(mktemp -d)"
uv venv -p 3.11 "$venv"
uv pip install -p "$venv" openvino-xai==1.1.0
"$venv/bin/python" -c "import openvino, openvino_xai; print('openvino', openvino.__version__)"
echo "export OVXAI_PYTHON=$venv/bin/python   # read by benchmarks/black_box_rows.py"
