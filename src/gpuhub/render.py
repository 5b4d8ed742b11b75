"""Turn an :class:`Allocation` into the exact files and command a submission sends.

Pure: the same call serves ``gpuhub render`` / ``submit --dry-run`` and ``submit``.

Templates are untrusted data: they render in :mod:`gpuhub.sandbox` (no Python reachable, bounded
loops, size and time), shipped templates included, with ``StrictUndefined``.
Quoting is on by default: in a shell template every ``{{ value }}`` is shell-quoted unless the
code marked it :class:`Trusted` (admin-written setup lines, gpuhub-built directives). In an HTCondor
submit description, where shell quoting means nothing, only numbers, plain tokens and trusted text
may be written at all.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from gpuhub import __version__
from gpuhub.backends import backend_for
from gpuhub.backends.common import REQUEUE_SIGNAL
from gpuhub.errors import ConfigError, shown
from gpuhub.paths import shipped_dir
from gpuhub.plan import Allocation
from gpuhub.sandbox import UNTRUSTED_ERRORS, SafeEnvironment, describe, render_bounded
from gpuhub.values import TOKEN_RE


class Trusted(str):
    """Text written into a script as is: code from the site file, or built by gpuhub itself."""

    __slots__ = ()


@dataclass(frozen=True)
class RenderedJob:
    """What a submission sends: files (name -> text), the submit argv and which file goes on stdin."""

    allocation: Allocation
    files: dict[str, str]
    submit_argv: list[str]
    stdin_file: str | None

    @property
    def main_file(self) -> str:
        return next(iter(self.files))

    def submit_command(self) -> str:
        cmd = shlex.join(self.submit_argv)
        return f"{cmd} < {self.stdin_file}" if self.stdin_file else cmd

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.allocation.summary(),
            "files": self.files,
            "submit_argv": self.submit_argv,
            "stdin_file": self.stdin_file,
        }


def _shell_finalize(value: Any) -> str:
    if isinstance(value, Trusted):
        return value
    if value is None or isinstance(value, dict | list | tuple):
        raise jinja2.TemplateError(f"template tried to write {type(value).__name__} {shown(value)} into a script")
    return shlex.quote(str(value))


def _plain_finalize(value: Any) -> str:
    if isinstance(value, Trusted) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    if isinstance(value, str) and TOKEN_RE.fullmatch(value):
        return value
    raise jinja2.TemplateError(f"refusing to write {shown(value)} into a submit description: not a plain token")


def _argv(args: list[str]) -> Trusted:
    return Trusted(shlex.join(args))


def _path(value: str) -> Trusted:
    """Quote a path but keep a leading ``~/`` meaning the home directory."""
    if value == "~":
        return Trusted('"$HOME"')
    if value.startswith("~/"):
        return Trusted('"$HOME"/' + shlex.quote(value[2:]))
    return Trusted(shlex.quote(value))


def _env_for(shell: bool, search_path: tuple[str, ...]) -> jinja2.Environment:
    from gpuhub.templatecache import bytecode_cache

    env = SafeEnvironment(
        loader=jinja2.FileSystemLoader(list(search_path)),
        bytecode_cache=bytecode_cache("shell" if shell else "plain"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_shell_finalize if shell else _plain_finalize,
    )
    env.filters["trusted"] = Trusted
    env.filters["argv"] = _argv
    env.filters["path"] = _path
    return env


def _template_path() -> list[str]:
    """Site directories (highest layer first, so a site file's own template sits beside it),
    then the shipped ``job_templates/``."""
    from gpuhub.registry import layers

    dirs = [str(layer.path) for layer in reversed(layers()) if layer.name != "shipped"]
    return [*dirs, str(shipped_dir("job_templates"))]


_ENVS: dict[tuple[bool, tuple[str, ...]], jinja2.Environment] = {}


def environment(shell: bool) -> jinja2.Environment:
    """One Jinja2 environment per (kind, search path), so compiled templates are reused."""
    key = (shell, tuple(_template_path()))
    if key not in _ENVS:
        _ENVS[key] = _env_for(*key)
    return _ENVS[key]


def render(alloc: Allocation, token: str | None = None) -> RenderedJob:
    """Render every file of the job for ``alloc``'s site; ``token`` tags it for idempotent submit."""
    site = alloc.site
    backend = backend_for(site.scheduler)
    ctx = {
        "gpuhub_version": __version__,
        "site": site,
        "alloc": alloc,
        "req": alloc.request,
        **backend.context(alloc, token),
    }
    ctx["directives"] = [Trusted(d) for d in ctx.get("directives", [])]
    ctx["setup"] = [Trusted(line) for line in ctx.get("setup", [])]
    prepare, command_line = backend.launch(alloc)  # built from quoted user values: safe to write as is
    ctx["launch_setup"] = [Trusted(line) for line in prepare]
    ctx["command_line"] = Trusted(command_line)
    ctx["requeue"] = alloc.request.requeue
    ctx["requeue_signal"] = Trusted(REQUEUE_SIGNAL)
    files = {}
    main = next(iter(backend.files))
    for out_name, template_name in backend.files.items():
        if site.template and out_name == main:
            template_name = site.template
        shell = not backend.is_plain(out_name)
        try:
            template = environment(shell).get_template(template_name)
            files[out_name] = render_bounded(template, ctx)
        except jinja2.TemplateNotFound as exc:
            via = f" (included by {template_name!r})" if exc.name != template_name else ""
            raise ConfigError(
                f"site {site.name!r}: template {shown(exc.name)}{via} not found in {', '.join(_template_path())}"
            ) from None
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"{exc.filename or template_name}:{exc.lineno}: template error: {exc.message}") from None
        except jinja2.UndefinedError as exc:
            raise ConfigError(f"template {template_name!r}: {exc.message}") from None
        except (jinja2.TemplateError, *UNTRUSTED_ERRORS) as exc:
            where = template_source(template_name) or template_name
            raise ConfigError(f"template {where}: {describe(exc)}") from None
    return RenderedJob(alloc, files, backend.submit_argv(), backend.stdin_file)


def template_source(name: str) -> Path | None:
    """Where a template name resolves (for `sites show`)."""
    for directory in _template_path():
        candidate = Path(directory) / name
        if candidate.is_file():
            return candidate
    return None
