#!/usr/bin/env bash
# build-scrontab.sh: build and install the `scrontab` client, which Debian 12's slurm-client
# (22.05.8) does not ship (debian/slurm-client.install omits it), although slurmctld supports
# scrontab (start-slurm.sh sets ScronParameters=enable).
#
# Usage: bash scripts/build-scrontab.sh      (as root; about 20 s; a no-op if scrontab exists)
#
# Builds only that client from the Debian source of the *installed* slurm version and links it
# against the installed private libslurmfull.so, so the versions match exactly. Installs
# /usr/local/bin/scrontab. Needs the Slurm packages (start-slurm.sh installs them); installs
# gcc, make and dpkg-dev when missing, and adds a deb-src entry only for the build.
set -euo pipefail
log() { echo "[build-scrontab] $*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

if command -v scrontab >/dev/null; then log "scrontab already at $(command -v scrontab)"; exit 0; fi
ver=$(dpkg-query -W -f='${Version}' slurm-client 2>/dev/null) \
  || { log "slurm-client is not installed: run scripts/start-slurm.sh first"; exit 1; }
libdir=$(dirname "$(dpkg -L slurm-wlm-basic-plugins 2>/dev/null | grep '/libslurmfull.so$' | head -1)")
[ -f "$libdir/libslurmfull.so" ] || { log "libslurmfull.so not found"; exit 1; }

export DEBIAN_FRONTEND=noninteractive
need=()
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v make >/dev/null || need+=(make)
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/scrontab-build.XXXXXX)
src_list=/etc/apt/sources.list.d/zz-hpc-eval-slurm-src.sources
cleanup() { rm -rf "$work"; rm -f "$src_list"; apt-get update -qq >/dev/null 2>&1 || true; }
trap cleanup EXIT

# temporary deb-src entry for the suites this machine uses
. /etc/os-release
cat > "$src_list" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $VERSION_CODENAME $VERSION_CODENAME-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: $VERSION_CODENAME-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt-get update -qq >/dev/null
cd "$work"
log "fetching source slurm-wlm=$ver"
apt-get source -qq "slurm-wlm=$ver" >"$work/source.log" 2>&1 || { cat "$work/source.log" >&2; exit 1; }
cd slurm-wlm-*/
log "configure (~15 s)"
./configure --prefix=/usr --sysconfdir=/etc/slurm --without-rpath --disable-debug \
  --enable-multiple-slurmd >configure.log 2>&1 || { tail -30 configure.log >&2; exit 1; }
cd src/scrontab
make -s env.o opt.o parse.o scrontab.o default_crontab.bino usage.bino >/dev/null
gcc -O2 -pthread -o scrontab env.o opt.o parse.o scrontab.o default_crontab.bino usage.bino \
  -L"$libdir" -lslurmfull -Wl,-rpath,"$libdir"
install -m 0755 scrontab /usr/local/bin/scrontab
log "installed /usr/local/bin/scrontab (slurm $ver)"
