"""Turn the OHIF viewer's ``dist/`` (built for the site root ``/``) into a copy served under a prefix.

The ``@ohif/app`` package ships a production build whose absolute URLs all start at ``/``. Serving it under
``/viewer/`` needs every place where that root is *baked in* rewritten; OHIF's own runtime paths (router, OIDC
redirects) follow ``window.PUBLIC_URL`` and ``routerBasename`` and need nothing. What is rewritten, and why:

- ``index.html``: ``window.PUBLIC_URL="/"`` (twice), and every ``href``/``src``/``content`` attribute that starts
  with ``/`` (the app bundle, its CSS, ``app-config.js``, the manifest, icons, the tile image).
- every webpack/rspack runtime (``app.bundle.*.js`` and the worker bundles that carry their own runtime:
  decoders, compute, interpolation, polySeg, histogram): ``__webpack_require__.p = "/"`` is the public path the
  chunk loader, the CSS chunk loader, ``new Worker(…)`` and ``.wasm`` asset URLs are built from. Left alone, every
  lazy chunk 404s (``ChunkLoadError``) and image decoding dies in the workers.
- ``app.bundle.*.js``: the microscopy viewer is imported from the absolute ``'/dicom-microscopy-viewer/…'``.
- the onnxruntime loader (segmentation tools) uses ``wasmPaths = 'ort/'`` and the cornerstone init sets
  ``PUBLIC_LIB_URL ||= './${component}/'``: both relative to the *page* URL, so they break on nested SPA routes;
  they are made absolute under the prefix.
- CSS: ``url(/…)`` (the Inter font files).
- ``manifest.json``, ``assets/manifest.webapp``, ``assets/yandex-browser-manifest.json``,
  ``assets/browserconfig.xml``: ``/assets/…`` icon paths.
- ``sw.js``: the workbox precache list (``"url":"/…"``). OHIF does not register it (its ``init-service-worker.js``
  unregisters service workers), but it is kept consistent.

Dropped from the copy: ``app-config.js`` (Mosaic generates it per request, see :func:`mosaic.viewer.mount_viewer`)
and the static-host files ``_headers``, ``_redirects`` and ``serve.json``.

Every rule says how many replacements it must make; after rewriting, all text files are scanned again for any
root-absolute reference to a top-level entry of ``dist/`` that is still unprefixed. Either check failing stops the
build, so a new OHIF version that bakes the root somewhere new is caught at install time, not in a browser.

Unchanged files are hard links into the extracted package (no 200 MB copy); changed files are written anew. Every
file's mtime is set to the build time, so ETag/Last-Modified change with each install.

This module is standard library only: ``scripts/install-viewer.sh`` runs it as a plain script
(``python3 src/mosaic/viewer/build.py DIST OUT --prefix /viewer/``) before or without the virtualenv.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: Written into the output directory; :func:`mosaic.viewer.mount_viewer` reads the prefix back from it.
METADATA_NAME = ".mosaic-viewer.json"

#: Files in ``dist/`` that are not copied (see the module docstring).
DROPPED = frozenset({"app-config.js", "_headers", "_redirects", "serve.json"})

#: Text files that are rewritten or scanned; everything else (images, wasm, fonts, source maps) is linked as is.
TEXT_SUFFIXES = frozenset({".html", ".js", ".mjs", ".css", ".json", ".webapp", ".xml"})

#: Root-absolute references that are correct as they are. OHIF resolves its OIDC silent-refresh default against
#: ``routerBasename``, which is already the prefix.
ALLOWED_LEFTOVERS = frozenset({"'/silent-refresh.html'"})


class RewriteError(RuntimeError):
    """The package does not look like the build these rules were written for."""


@dataclass
class Rule:
    """One substitution, applied to the files whose path (relative to dist, POSIX) matches ``files``.

    Patterns match the original root-absolute form only; no two rules may match the same text in the same file
    (a second rule would prefix it twice).
    """

    name: str
    files: re.Pattern[str]
    pattern: re.Pattern[str]
    replacement: Callable[[str], str]  # prefix -> replacement text (may use \\1 group references)
    minimum: int  # replacements the whole build must have, at least
    maximum: int | None = None
    hits: dict[str, int] = field(default_factory=dict)

    def apply(self, relpath: str, text: str, prefix: str) -> str:
        if not self.files.search(relpath):
            return text
        new_text, count = self.pattern.subn(self.replacement(prefix), text)
        if count:
            self.hits[relpath] = self.hits.get(relpath, 0) + count
        return new_text

    @property
    def total(self) -> int:
        return sum(self.hits.values())


def make_rules() -> list[Rule]:
    """The rewrite rules for ``@ohif/app`` 3.x production builds (checked against 3.13.2)."""
    js = re.compile(r"\.m?js$")
    return [
        Rule("index.html PUBLIC_URL", re.compile(r"^index\.html$"),
             re.compile(r'(window\.PUBLIC_URL\s*=\s*)"/"'), lambda p: rf'\1"{p}"', minimum=1),
        Rule("index.html href/src/content", re.compile(r"^index\.html$"),
             re.compile(r'(\s(?:href|src|content)=")/(?!/)'), lambda p: rf"\1{p}", minimum=3),
        Rule("webpack public path", js,
             re.compile(r'(__webpack_require__\.p\s*=\s*)"/"'), lambda p: rf'\1"{p}"', minimum=1),
        Rule("microscopy viewer import", re.compile(r"^(?!sw\.js$).*\.m?js$"),
             re.compile(r"""(['"])/dicom-microscopy-viewer/"""), lambda p: rf"\1{p}dicom-microscopy-viewer/",
             minimum=1),
        Rule("onnxruntime wasmPaths", js,
             re.compile(r"""(wasmPaths\s*=\s*)(['"])ort/\2"""), lambda p: rf"\1'{p}ort/'", minimum=0),
        Rule("PUBLIC_LIB_URL", js,
             re.compile(r"""(PUBLIC_LIB_URL\s*\|\|=\s*)(['"])\./\$\{component\}/\2"""),
             lambda p: rf"\1'{p}${{component}}/'", minimum=0),
        Rule("CSS url()", re.compile(r"\.css$"),
             re.compile(r"""(url\(\s*['"]?)/(?!/)"""), lambda p: rf"\1{p}", minimum=1),
        Rule("manifest icon paths", re.compile(r"^(manifest\.json|assets/.*\.(json|webapp|xml))$"),
             re.compile(r"""(["'])/(?=assets/)"""), lambda p: rf"\1{p}", minimum=1),
        Rule("service worker precache", re.compile(r"^sw\.js$"),
             re.compile(r'("url"\s*:\s*")/(?!/)'), lambda p: rf"\1{p}", minimum=0),
    ]


def normalise_prefix(prefix: str) -> str:
    """``/viewer`` / ``viewer/`` / ``/viewer/`` -> ``/viewer/``; the prefix must be a plain absolute path."""
    stripped = prefix.strip("/")
    if not stripped or not re.fullmatch(r"[A-Za-z0-9._~\-/]+", stripped) or "//" in stripped:
        raise ValueError(f"viewer prefix must be a non-root URL path like /viewer, not {prefix!r}")
    return f"/{stripped}/"


def _leftover_pattern(dist: Path) -> re.Pattern[str]:
    names = sorted((entry.name for entry in dist.iterdir() if entry.name not in DROPPED), key=len, reverse=True)
    alternation = "|".join(re.escape(name) for name in names)
    return re.compile(rf"""[\"'(`]/(?:{alternation})(?=[/\"'?#)`])[^\"'()`\s]*[\"')`]?""")


def _text_files(root: Path) -> Iterable[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            yield path


def _link_tree(source: Path, target: Path) -> None:
    def link_or_copy(src: str, dst: str) -> object:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        return dst

    shutil.copytree(source, target, copy_function=link_or_copy,
                    ignore=lambda directory, names: [n for n in names if Path(directory) == source and n in DROPPED])


def _replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` without touching a hard-linked original."""
    temporary = path.with_name(path.name + ".rewrite-tmp")
    temporary.write_text(text, encoding="utf-8", errors="surrogateescape")
    os.replace(temporary, path)


def rewrite(dist: Path, out: Path, prefix: str, *, version: str = "", log: Callable[[str], None] = print) -> None:
    """Build ``out`` from ``dist`` with the site root rewritten to ``prefix``; ``out`` is replaced atomically."""
    prefix = normalise_prefix(prefix)
    dist = dist.resolve()
    if not (dist / "index.html").is_file():
        raise RewriteError(f"{dist} has no index.html: not an OHIF dist directory")
    started = time.monotonic()
    out = out.resolve()
    staging = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    _link_tree(dist, staging)
    try:
        rules = make_rules()
        leftover = _leftover_pattern(dist)
        leftovers: list[str] = []
        changed = 0
        for path in _text_files(staging):
            relpath = path.relative_to(staging).as_posix()
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
            new_text = text
            for rule in rules:
                new_text = rule.apply(relpath, new_text, prefix)
            if new_text != text:
                _replace_file(path, new_text)
                changed += 1
            for match in leftover.finditer(new_text):
                if match.group(0) not in ALLOWED_LEFTOVERS:
                    leftovers.append(f"{relpath}: {match.group(0)[:120]}")
        problems = [f"rule {rule.name!r} made {rule.total} replacements, expected at least {rule.minimum}"
                    for rule in rules if rule.total < rule.minimum]
        if leftovers:
            problems.append("root-absolute references left unprefixed:\n  " + "\n  ".join(leftovers[:40]))
        if problems:
            raise RewriteError("cannot rewrite the OHIF build for " + prefix + ":\n" + "\n".join(problems))
        for rule in rules:
            where = ", ".join(f"{name} x{count}" if count > 1 else name for name, count in sorted(rule.hits.items()))
            log(f"  {rule.name}: {rule.total} ({where or 'none'})")
        # npm stamps every file 1985-10-26: HTTP validators (ETag = mtime + size, Last-Modified) would then not change
        # between OHIF versions for files of equal size. Give the whole build its own time instead.
        now = time.time()
        for path in staging.rglob("*"):
            if path.is_file():
                os.utime(path, (now, now))
        metadata = {"ohif_version": version, "prefix": prefix, "source": str(dist), "rewritten_files": changed}
        (staging / METADATA_NAME).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            retired = out.with_name(f"{out.name}.old-{os.getpid()}")
            os.replace(out, retired)
            os.replace(staging, out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"rewrote {changed} files for {prefix} into {out} in {time.monotonic() - started:.1f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("dist", type=Path, help="the dist/ directory of the extracted @ohif/app package")
    parser.add_argument("out", type=Path, help="output directory (replaced)")
    parser.add_argument("--prefix", default="/viewer/", help="URL path the viewer is served under")
    parser.add_argument("--version", default="", help="OHIF version, recorded in the metadata file")
    args = parser.parse_args(argv)
    try:
        rewrite(args.dist, args.out, args.prefix, version=args.version)
    except (RewriteError, ValueError) as exc:
        print(f"install-viewer: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
