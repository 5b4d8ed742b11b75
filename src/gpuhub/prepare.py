"""What a submission sends, made before anything is sent: the dry run ``render`` shows.

Kept apart from :mod:`gpuhub.jobs` (which sends and records) so that ``gpuhub render`` and
``submit --dry-run`` load neither the ledger nor a transport.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from gpuhub.plan import plan
from gpuhub.registry import load_site
from gpuhub.render import RenderedJob, render

if TYPE_CHECKING:
    from gpuhub.request import JobRequest
    from gpuhub.site import Site


def new_token() -> str:
    """16 random hex digits (``secrets.token_hex(8)``: the same system source, lighter to import)."""
    return os.urandom(8).hex()


def prepare(site: Site | str, request: JobRequest, token: str | None = None) -> RenderedJob:
    """The dry run: exactly what :func:`gpuhub.jobs.submit` sends."""
    site_obj = load_site(site) if isinstance(site, str) else site
    return render(plan(site_obj, request), token=token)
