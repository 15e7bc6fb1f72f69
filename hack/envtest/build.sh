#!/usr/bin/env bash
# Builds the envtest binaries from Go modules into a per-user cache outside the checkout, so
# every clone on this machine shares one build. Does nothing when they are already there, and
# nothing at all when KUBEBUILDER_ASSETS names a directory that already holds them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -nE 's/^\s*k8s.io\/kubernetes (v[0-9.]+)$/\1/p' "$here/go.mod")
etcd_version=$(sed -nE 's/^\s*go.etcd.io\/etcd\/server\/v3 (v[0-9.]+)$/\1/p' "$here/go.mod")
out="${XDG_CACHE_HOME:-$HOME/.cache}/localcache/envtest/${version#v}"
if [[ "${1:-}" == --print-dir ]]; then echo "$out"; exit 0; fi
if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "${KUBEBUILDER_ASSETS}/kube-apiserver" && -x "${KUBEBUILDER_ASSETS}/etcd" ]]; then
  echo "envtest: using KUBEBUILDER_ASSETS=${KUBEBUILDER_ASSETS}"
  exit 0
fi
mkdir -p "$out"
command -v go >/dev/null || { echo "envtest: the Go toolchain (go >= 1.26) is needed to build kube-apiserver and etcd" >&2; exit 1; }
minor=$(echo "$version" | cut -d. -f2)
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${version} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=${version}"
build() {  # name package [required]
  local name=$1 pkg=$2 required=$3
  [[ -x "$out/$name" ]] && return 0
  echo "envtest: building $name from $pkg (cold builds take minutes)"
  local start=$SECONDS
  if (cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/.$name.tmp" "$pkg"); then
    mv "$out/.$name.tmp" "$out/$name"
    echo "envtest: built $name in $((SECONDS - start))s"
  elif [[ $required == yes ]]; then
    echo "envtest: building $name failed (see the go output above)" >&2; exit 1
  else
    echo "envtest: optional $name did not build; tests that need it will say so" >&2
  fi
}
build etcd go.etcd.io/etcd/server/v3 yes
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver yes
build kubectl k8s.io/kubernetes/cmd/kubectl yes
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager no
echo "envtest: binaries in $out"
