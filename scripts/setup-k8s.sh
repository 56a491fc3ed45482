#!/usr/bin/env bash
# Builds a real kube-apiserver (+ kube-controller-manager, kubectl for kustomize) from Debian's `kubernetes`
# source package with Debian's Go, and installs etcd. About 12-15 minutes cold on two
# cores; cached under ~/.cache/thrifty by a key of the build inputs below only (progress
# output can change without a rebuild). Prints the bin folder on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PROGRESS_TAG=setup-k8s; source "$here/lib/progress.sh"

# Everything that decides what gets built; change any of it and the cache key changes.
APT_PACKAGES=(etcd-server golang-go rsync dpkg-dev openssl)
SOURCE_PACKAGE=kubernetes  # Debian bookworm: 1.20.2, vendored Go dependencies
TARGETS="cmd/kube-apiserver cmd/kube-controller-manager cmd/kubectl"
GO_ENV=(GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 GO111MODULE=off)
KEY=$(cache_key "${APT_PACKAGES[@]}" "$SOURCE_PACKAGE" "$TARGETS" "${GO_ENV[@]}")

cache_root="${THRIFTY_CACHE:-$HOME/.cache/thrifty}"
out="$cache_root/k8s-$KEY"

need_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  step "apt-get install ${need_apt[*]}" 60
  with_heartbeat 60 "apt-get update" apt-get update -qq >&2
  export DEBIAN_FRONTEND=noninteractive
  with_heartbeat 60 "apt-get install" \
    apt-get install -y --no-install-recommends "${need_apt[@]}" >&2
  # Debian starts etcd as a service on install; the tests run their own. Stop only the
  # service this install started, through the service manager (never by process name).
  if [[ " ${need_apt[*]} " == *" etcd-server "* ]]; then
    systemctl stop etcd >/dev/null 2>&1 || service etcd stop >/dev/null 2>&1 || true
  fi
  step_done
fi

if [[ -x "$out/bin/kube-apiserver" && -x "$out/bin/kube-controller-manager" && -x "$out/bin/kubectl" ]]; then
  echo "$out/bin"
  exit 0
fi

log "building Kubernetes from Debian's source into $out (about 15 minutes on 2 cores; 3 steps)"
work="$cache_root/k8s-build-$KEY"
rm -rf "$work" && mkdir -p "$work"
# A temporary deb-src entry derived from the system's own Debian sources file.
src_list=/etc/apt/sources.list.d/thrifty-deb-src.sources
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$src_list"
else
  grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > "${src_list%.sources}.list"
fi
trap 'rm -f "$src_list" "${src_list%.sources}.list"; apt-get update -qq >/dev/null 2>&1 || true' EXIT
step "1/3 fetching Debian's $SOURCE_PACKAGE source package (~30 MB)" 60
with_heartbeat 60 "apt-get source" bash -c '
  apt-get update -qq && cd "$1" && apt-get source --download-only "$2" &&
  { dpkg-source -x --skip-patches "$2"_*.dsc src 2>&1 || dpkg-source -x "$2"_*.dsc src; }' _ "$work" "$SOURCE_PACKAGE" >&2
step_done

gopath="$work/.go"
mkdir -p "$gopath/src/k8s.io"
ln -s "$work/src" "$gopath/src/k8s.io/kubernetes"
step "2/3 building $TARGETS with Debian's Go" 780
(
  cd "$gopath/src/k8s.io/kubernetes"
  export GOPATH="$gopath" GOCACHE="$work/.gocache" "${GO_ENV[@]}"
  with_heartbeat 780 "go build" make WHAT="$TARGETS" >&2
)
step_done
step "3/3 installing the binaries" 2
mkdir -p "$out/bin"
cp "$work/src/_output/bin/kube-apiserver" "$work/src/_output/bin/kube-controller-manager" "$work/src/_output/bin/kubectl" "$out/bin/" 2>/dev/null \
  || cp "$work"/src/_output/local/bin/linux/amd64/kube{-apiserver,-controller-manager,ctl} "$out/bin/"
rm -rf "$work"
step_done
log "ready in $(total_elapsed): kube-apiserver, kube-controller-manager, kubectl in $out/bin"
echo "$out/bin"
