#!/usr/bin/env bash
# Builds a real kube-apiserver (+ kube-controller-manager, kubectl for kustomize) from Debian's `kubernetes`
# source package with Debian's Go, and installs etcd. About 12-15 minutes cold on two
# cores; cached by this script's content hash. Prints the bin folder on its last line.
set -euo pipefail

cache_root="${THRIFTY_CACHE:-$HOME/.cache/thrifty}"
script_hash=$(sha256sum "$0" | cut -c1-12)
out="$cache_root/k8s-$script_hash"
log() { echo "[setup-k8s] $*" >&2; }

need_apt=()
for pkg in etcd-server golang-go rsync dpkg-dev openssl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  log "apt-get install ${need_apt[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi
# Debian starts etcd as a service on install; the tests run their own.
systemctl stop etcd >/dev/null 2>&1 || service etcd stop >/dev/null 2>&1 || pkill -x etcd || true

if [[ -x "$out/bin/kube-apiserver" && -x "$out/bin/kube-controller-manager" && -x "$out/bin/kubectl" ]]; then
  echo "$out/bin"
  exit 0
fi

work="$cache_root/k8s-build"
rm -rf "$work" && mkdir -p "$work"
# A temporary deb-src entry derived from the system's own Debian sources file.
src_list=/etc/apt/sources.list.d/thrifty-deb-src.sources
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$src_list"
else
  grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > "${src_list%.sources}.list"
fi
trap 'rm -f "$src_list" "${src_list%.sources}.list"; apt-get update -qq >/dev/null 2>&1 || true' EXIT
log "fetching Debian's kubernetes source package"
apt-get update -qq >&2
(cd "$work" && apt-get source -qq --download-only kubernetes >&2 && dpkg-source -x --skip-patches kubernetes_*.dsc src >&2 2>&1 || dpkg-source -x kubernetes_*.dsc src >&2)

gopath="$work/.go"
mkdir -p "$gopath/src/k8s.io"
ln -s "$work/src" "$gopath/src/k8s.io/kubernetes"
log "building kube-apiserver and kube-controller-manager (about 12 minutes)"
(
  cd "$gopath/src/k8s.io/kubernetes"
  export GOPATH="$gopath" GOPROXY=off GOFLAGS=-mod=vendor CGO_ENABLED=0 GO111MODULE=off GOCACHE="$work/.gocache"
  make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kubectl" >&2
)
mkdir -p "$out/bin"
cp "$work/src/_output/bin/kube-apiserver" "$work/src/_output/bin/kube-controller-manager" "$work/src/_output/bin/kubectl" "$out/bin/" 2>/dev/null \
  || cp "$work"/src/_output/local/bin/linux/amd64/kube{-apiserver,-controller-manager,ctl} "$out/bin/"
rm -rf "$work"
log "ready"
echo "$out/bin"
