# Sourced by the scripts: where the tools they install live.
# shellcheck shell=bash
export UV_PYTHON_DOWNLOADS=never
# uv, when scripts/setup had to install it itself.
UV_HOME=$ROOT/.tools/uv
export PATH=$UV_HOME/bin:$PATH
