#!/usr/bin/env bash
# Regenerate requirements/lock.txt: the exact set of releases the README installs and CI tests.
#
#   scripts/lock.sh            newest releases that pyproject.toml's ranges admit, installed in a fresh venv
#
# The lock is a pip constraints file (pip install -c requirements/lock.txt -e ".[dev,serve]"): it pins what
# an install picks without adding anything to it, so every extra installs from the same tested set. It is made
# on Linux x86_64 with the Python that runs this script (3.11 here); elsewhere install from the ranges alone.
# After regenerating, run the tests on it (.ci/run does) before committing the new lock.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-dev,serve,engines,bench}
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q --upgrade -e ".[$EXTRAS]"
{
  echo "# The tested set: pip install -c requirements/lock.txt -e \".[dev,serve]\" (any of the extras $EXTRAS)."
  echo "# Made by scripts/lock.sh on $(date -u +%Y-%m-%d) with $("$venv/bin/python" -V) on $(uname -s) $(uname -m):"
  echo "# the newest releases pyproject.toml admitted that day. Other platforms: install from the ranges alone."
  "$venv/bin/python" -m pip freeze --exclude-editable --all | grep -vE '^(pip|setuptools|wheel)==' | LC_ALL=C sort -f
} >requirements/lock.txt.new
mv requirements/lock.txt.new requirements/lock.txt
echo "wrote requirements/lock.txt ($(grep -vc '^#' requirements/lock.txt) pins)"
