#!/usr/bin/env bash
# Installs the RTSP relay that tests/test_rtsp.py streams through: Debian's Perl RTSP::Server
# (librtsp-server-perl, with its AnyEvent/Moose dependencies). Idempotent and quiet; needs root (CI runs as root).
set -euo pipefail

if perl -MRTSP::Server -e 1 >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends librtsp-server-perl >/dev/null
perl -MRTSP::Server -e 1
