#!/usr/bin/env bash
# Install the OHIF zero-footprint viewer that Mosaic serves at /viewer/.
#
#   build/ohif/ohif-app-<version>.tgz   the @ohif/app package, fetched with `npm pack` (npm registry only)
#   build/ohif/package/                 the package extracted (its dist/ is the built app, served from "/")
#   build/viewer/                       dist/ with the site root rewritten to the prefix (src/mosaic/viewer/build.py)
#
# Reproducible like `npm ci`: the version AND the tarball's sha512 integrity are pinned below; a tarball that
# does not match is rejected. Only the package's own tarball is fetched: its dist/ is self-contained, so none of
# its (build-time) dependencies are installed.
#
# Idempotent and fast when done: build/viewer/.install-stamp records the version, integrity, prefix and the
# rewrite rules' checksum; when it matches, this prints one line and touches nothing (no network).
#
# Needs: node + npm (Debian: nodejs npm), python3 (>= 3.11), tar.
# Environment: VIEWER_PREFIX (default /viewer/), BUILD_DIR (default build), VIEWER_PYTHON (default
# .venv/bin/python, else python3), FORCE=1 to rebuild.
set -euo pipefail

OHIF_PACKAGE="@ohif/app"
OHIF_VERSION="3.13.2"
OHIF_INTEGRITY="sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "${root}"
build="${BUILD_DIR:-build}"
prefix="${VIEWER_PREFIX:-/viewer/}"
rules="src/mosaic/viewer/build.py"
ohif_dir="${build}/ohif"
tarball="${ohif_dir}/ohif-app-${OHIF_VERSION}.tgz"
viewer_dir="${build}/viewer"
stamp="${viewer_dir}/.install-stamp"

python="${VIEWER_PYTHON:-}"
if [[ -z "${python}" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi

rules_sum="$(sha256sum "${rules}" | cut -c1-16)"
stamp_key="${OHIF_PACKAGE}@${OHIF_VERSION} ${OHIF_INTEGRITY} prefix=${prefix} rules=${rules_sum}"

if [[ -z "${FORCE:-}" && -f "${stamp}" && "$(cat "${stamp}")" == "${stamp_key}" ]]; then
    echo "install-viewer: OHIF ${OHIF_VERSION} already in ${viewer_dir} (prefix ${prefix})"
    exit 0
fi

for tool in node npm tar; do
    if ! command -v "${tool}" >/dev/null 2>&1; then
        echo "install-viewer: '${tool}' is missing (Debian: apt-get install nodejs npm)" >&2
        exit 1
    fi
done

started=${SECONDS}
integrity_of() {
    node -e 'const c = require("crypto"), f = require("fs");
             process.stdout.write("sha512-" + c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"));' "$1"
}

mkdir -p "${ohif_dir}"
if [[ ! -f "${tarball}" || "$(integrity_of "${tarball}")" != "${OHIF_INTEGRITY}" ]]; then
    echo "install-viewer: fetching ${OHIF_PACKAGE}@${OHIF_VERSION} (npm pack)"
    rm -f "${tarball}"
    # npm pack only downloads the tarball (through npm's cache): no dependencies, no lifecycle scripts.
    npm pack "${OHIF_PACKAGE}@${OHIF_VERSION}" --pack-destination "${ohif_dir}" --ignore-scripts \
        --no-audit --no-fund --loglevel=error >/dev/null
    if [[ ! -f "${tarball}" ]]; then
        echo "install-viewer: npm pack did not produce ${tarball}" >&2
        exit 1
    fi
fi
actual="$(integrity_of "${tarball}")"
if [[ "${actual}" != "${OHIF_INTEGRITY}" ]]; then
    echo "install-viewer: ${tarball} has integrity ${actual}, expected ${OHIF_INTEGRITY}" >&2
    rm -f "${tarball}"
    exit 1
fi

echo "install-viewer: extracting into ${ohif_dir}/package"
rm -rf "${ohif_dir}/package" "${ohif_dir}/package.tmp"
mkdir -p "${ohif_dir}/package.tmp"
tar -xzf "${tarball}" -C "${ohif_dir}/package.tmp" --no-same-owner
mv "${ohif_dir}/package.tmp/package" "${ohif_dir}/package"
rmdir "${ohif_dir}/package.tmp"

echo "install-viewer: rewriting the site root to ${prefix}"
rm -f "${stamp}"
"${python}" "${rules}" "${ohif_dir}/package/dist" "${viewer_dir}" --prefix "${prefix}" --version "${OHIF_VERSION}"
printf '%s\n' "${stamp_key}" >"${stamp}.tmp"
mv "${stamp}.tmp" "${stamp}"
echo "install-viewer: OHIF ${OHIF_VERSION} ready in ${viewer_dir} ($((SECONDS - started))s)"
