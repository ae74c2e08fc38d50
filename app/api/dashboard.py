"""The dashboard's pages and assets: /dashboard (jobs), /dashboard/jobs/{job_id} (one
job) and /dashboard/services, all one HTML shell whose script (app/dashboard/) reads
the REST API and follows the WebSockets with the key the person enters.

The pages hold no data, so they need no key; every asset is in the package and the
Content-Security-Policy lets a page load and connect to this origin only.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Response

from app.errors import NotFound

router = APIRouter(prefix="/dashboard", include_in_schema=False)

ASSET_DIR = Path(__file__).resolve().parent.parent / "dashboard"
# The page's script is dashboard.js, a native ES module that imports the others.
SCRIPTS = (
    "dashboard.js",
    "api.js",
    "live.js",
    "ui.js",
    "jobs_page.js",
    "job_page.js",
    "timeline.js",
    "services_page.js",
)
ASSET_TYPES = {
    **dict.fromkeys(SCRIPTS, "text/javascript; charset=utf-8"),
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# 'self' covers this origin's ws:// and wss:// as well as its http(s)://.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Assets:
    page: bytes
    files: dict[str, bytes]


@lru_cache(maxsize=1)
def _assets() -> Assets:
    files = {name: (ASSET_DIR / name).read_bytes() for name in ASSET_TYPES}
    # Asset URLs carry a digest of the assets, so a browser may keep them for good and
    # still never runs an old script with a new page. The modules' imports of each other
    # carry it too: a module is fetched by its full URL, so an unversioned import would
    # be kept for good across releases.
    version = hashlib.sha256(b"".join(files.values())).hexdigest()[:12]
    for name in SCRIPTS:
        files[name] = files[name].replace(b"{{version}}", version.encode())
    page = (ASSET_DIR / "index.html").read_text().replace("{{version}}", version)
    return Assets(page=page.encode(), files=files)


def _page() -> Response:
    return Response(_assets().page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("")
async def jobs_page() -> Response:
    return _page()


@router.get("/services")
async def services_page() -> Response:
    return _page()


@router.get("/jobs/{job_id}")
async def job_page(job_id: uuid.UUID) -> Response:
    return _page()


@router.get("/assets/{name}")
async def asset(name: str) -> Response:
    media_type = ASSET_TYPES.get(name)
    if media_type is None:
        raise NotFound(f"no dashboard asset {name!r}")
    headers = {
        "Cache-Control": "public, max-age=31536000, immutable",
        "X-Content-Type-Options": "nosniff",
    }
    return Response(_assets().files[name], media_type=media_type, headers=headers)
