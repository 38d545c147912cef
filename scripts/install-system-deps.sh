#!/usr/bin/env bash
# Install the Debian packages that Mosaic's tests and benchmarks need, only when missing.
#
# Idempotent: when every package is already installed this prints one line and changes nothing
# (no `apt-get update`, no network). Works on a fresh Debian 12 machine, as root or through sudo.
#
#   dcmtk             storescu/findscu/movescu/getscu/echoscu/storescp: real DICOM peers
#   postgresql        initdb/pg_ctl/postgres: the index at scale (tests start their own server)
#   orthanc           a legacy PACS to interoperate with
#   orthanc-dicomweb  Orthanc's DICOMweb plugin
#   chromium          headless browser for the viewer tests (Playwright drives /usr/bin/chromium)
#   ffmpeg            real H.264 / H.265 encoders that make the tests' video clips
#   libjpeg-turbo-progs  jpegtran: a photo's EXIF orientation applied losslessly (also what `make run` needs)
#   dicom3tools       dciodvfy: the capture tests check the IODs they write
#
#   nodejs npm        only when no `npm` is on PATH: builds the OHIF viewer (scripts/install-viewer.sh)
#
# `install-system-deps.sh runtime` installs only what `make run` needs (jpegtran; node + npm for the viewer).
# Extra packages can be added with EXTRA_SYSTEM_PACKAGES="pkg1 pkg2".
set -euo pipefail

packages=(dcmtk postgresql orthanc orthanc-dicomweb chromium ffmpeg libjpeg-turbo-progs dicom3tools)
if [[ "${1:-}" == "runtime" ]]; then
    packages=(libjpeg-turbo-progs)
fi
if ! command -v npm >/dev/null 2>&1; then
    packages+=(nodejs npm)
fi
if [[ -n "${EXTRA_SYSTEM_PACKAGES:-}" ]]; then
    read -r -a extra <<<"${EXTRA_SYSTEM_PACKAGES}"
    packages+=("${extra[@]}")
fi

is_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

missing=()
for package in ${packages[@]+"${packages[@]}"}; do
    if ! is_installed "${package}"; then
        missing+=("${package}")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-system-deps: all present (${packages[*]:-nothing needed})"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: missing ${missing[*]} and apt-get is not available; install them by hand" >&2
    exit 1
fi

as_root=()
if [[ "$(id -u)" -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install-system-deps: missing ${missing[*]}; run as root or install sudo" >&2
        exit 1
    fi
    as_root=(sudo)
fi

echo "install-system-deps: installing ${missing[*]}"
${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -q
${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"

for package in "${missing[@]}"; do
    if ! is_installed "${package}"; then
        echo "install-system-deps: ${package} is still not installed" >&2
        exit 1
    fi
done
echo "install-system-deps: done"
