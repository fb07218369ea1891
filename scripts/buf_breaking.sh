#!/usr/bin/env bash
# `buf breaking` (FILE rules) of the working tree against the previous commit, so no commit breaks the
# API of the one before it. A shallow clone is deepened by one commit first; a repository with no
# previous commit (or whose previous commit has no buf.yaml) has nothing to compare and passes.
# Override the baseline with BUF_AGAINST (e.g. BUF_AGAINST='.git#branch=main' before opening a change).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
BUF=${BUF:-buf}
against=${BUF_AGAINST:-}
if [ -z "$against" ]; then
  if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
    git fetch --quiet --deepen=1 || echo "buf breaking: could not deepen the shallow clone" >&2
  fi
  if ! previous=$(git rev-parse --verify --quiet HEAD~1); then
    echo "buf breaking: no previous commit to compare against; skipped"
    exit 0
  fi
  if ! git cat-file -e "$previous:buf.yaml" 2>/dev/null; then
    echo "buf breaking: the previous commit has no buf.yaml; skipped"
    exit 0
  fi
  against=".git#ref=$previous"
fi
echo "buf breaking against $against"
$BUF breaking --against "$against"
