"""Staging a local project directory onto a site, with real transports (no mocks).

Every behaviour runs twice: through LocalTransport into a temporary home directory, and
(marked ``ssh``) through the SSHTransport of the testbed site into a unique directory under
``gpuhub-stage-test/`` in the testbed user's home, removed afterwards.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import gpuhub.transport
from gpuhub.errors import GpuhubError
from gpuhub.registry import load_site
from gpuhub.staging import DEFAULT_EXCLUDES, StageError, StageResult, check_local, remote_dir_for, stage
from gpuhub.transport.base import Transport, TransportError, Upload
from gpuhub.transport.local import LocalTransport

DATA = Path(__file__).parent / "data"
TEST_ROOT = "gpuhub-stage-test"


@dataclass
class Site:
    """A transport and a fresh remote directory, with helpers that look at what arrived."""

    kind: str
    transport: Transport
    remote_dir: str

    def files(self, remote_dir: str | None = None) -> set[str]:
        out = self.transport.run(["find", remote_dir or self.remote_dir, "-type", "f", "-printf", "%P\\0"]).stdout
        return {p for p in out.split("\0") if p}

    def path(self, rel: str) -> str:
        return f"{self.remote_dir}/{rel}"

    def sha256(self, rel: str) -> str:
        return self.transport.run(["sha256sum", "--", self.path(rel)]).stdout.split()[0]

    def text(self, rel: str) -> str:
        return self.transport.run(["cat", "--", self.path(rel)]).stdout

    def stat(self, rel: str, fmt: str) -> str:
        return self.transport.run(["stat", "-c", fmt, "--", self.path(rel)]).stdout.strip()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME for LocalTransport (its commands run there, relative paths are relative to it)."""
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("HOME", str(path))
    return path


@pytest.fixture(params=["local", pytest.param("ssh", marks=pytest.mark.ssh)])
def site(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    unique = f"{TEST_ROOT}/run-{secrets.token_hex(4)}"
    if request.param == "local":
        yield Site("local", LocalTransport(), unique)
        return
    request.getfixturevalue("testbed")
    monkeypatch.setenv("GPUHUB_SITES", str(DATA / "sites"))
    monkeypatch.setenv("GPUHUB_SSH_CONFIG", str(home / "no-ssh-config"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    transport = gpuhub.transport.transport_for(load_site("testbed"))
    try:
        yield Site("ssh", transport, unique)
    finally:
        transport.run(["rm", "-rf", "--", unique])
        transport.run(["rmdir", "--", TEST_ROOT], check=False)  # only if no other run is using it
        transport.close()


def write(path: Path, content: str | bytes = "x\n", mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    if mode is not None:
        path.chmod(mode)
    return path


def set_mtime(path: Path, delta: float) -> None:
    info = path.stat()
    os.utime(path, (info.st_atime, info.st_mtime + delta))


# What a student's checkout looks like: code to send, and everything the defaults leave out.
SENT = {
    "train.py": "import model\nprint('training')\n",
    "model/__init__.py": "",
    "model/net.py": "class Net: ...\n",
    "configs/base.yaml": "lr: 0.001\n",
    "notes/data.txt": "a file named data.txt is not the data directory\n",
    "README.md": "# project\n",
    "requirements.txt": "torch\n",
}
EXCLUDED = {
    ".git/config": "[core]\n",
    ".git/objects/ab/cdef": "blob",
    "__pycache__/train.cpython-311.pyc": "pyc",
    "model/__pycache__/net.cpython-311.pyc": "pyc",
    "stray.pyc": "pyc",
    ".venv/bin/python": "#!/bin/sh\n",
    "venv/lib/site.py": "",
    ".mypy_cache/3.11/x.json": "{}",
    ".pytest_cache/v/cache": "{}",
    "notebooks/.ipynb_checkpoints/a-checkpoint.ipynb": "{}",
    "data/train/0001.npy": "npy",
    "model/data/weights.bin": "w",
    "wandb/run-1/files/output.log": "log",
    "checkpoints/last.ckpt": "ckpt",
    ".DS_Store": "mac",
}


def project(root: Path) -> Path:
    for rel, content in {**SENT, **EXCLUDED}.items():
        write(root / rel, content)
    write(root / "run.sh", "#!/bin/sh\npython train.py\n", mode=0o755)
    return root


EXPECTED = {*SENT, "run.sh"}


# --------------------------------------------------------------------------------------------
# Sending what changed, and nothing else
# --------------------------------------------------------------------------------------------


def test_first_stage_sends_everything_but_excluded_then_nothing(site: Site, tmp_path: Path) -> None:
    local = project(tmp_path / "proj")
    first = stage(site.transport, local, site.remote_dir)
    assert isinstance(first, StageResult)
    assert (first.remote_dir, first.sent, first.skipped, first.deleted) == (site.remote_dir, len(EXPECTED), 0, 0)
    assert first.bytes_sent == sum((local / rel).stat().st_size for rel in EXPECTED)
    assert first.excluded > 0 and first.seconds > 0
    assert site.files() == EXPECTED
    assert site.text("train.py") == SENT["train.py"]
    assert site.stat("run.sh", "%a") == "755"  # still executable
    assert int(site.stat("train.py", "%Y")) == int((local / "train.py").stat().st_mtime)

    second = stage(site.transport, local, site.remote_dir)
    assert (second.sent, second.skipped, second.deleted, second.bytes_sent) == (0, len(EXPECTED), 0, 0)


def test_only_the_changed_file_is_sent(site: Site, tmp_path: Path) -> None:
    local = project(tmp_path / "proj")
    stage(site.transport, local, site.remote_dir)

    write(local / "model/net.py", "class Net:\n    layers = 3\n")  # new content, new size
    set_mtime(local / "model/net.py", 5)  # the same second as the first upload otherwise
    result = stage(site.transport, local, site.remote_dir)
    assert (result.sent, result.skipped) == (1, len(EXPECTED) - 1)
    assert result.bytes_sent == (local / "model/net.py").stat().st_size
    assert site.text("model/net.py") == "class Net:\n    layers = 3\n"

    set_mtime(local / "README.md", 10)  # touched, content unchanged
    assert stage(site.transport, local, site.remote_dir).sent == 1

    (local / "train.py").chmod(0o755)  # mode change
    assert stage(site.transport, local, site.remote_dir).sent == 1
    assert site.stat("train.py", "%a") == "755"

    write(local / "model/new_layer.py", "x = 1\n")  # new file in an existing directory
    write(local / "brand/new/deep/dir.py", "y = 2\n")  # new directories
    result = stage(site.transport, local, site.remote_dir)
    assert result.sent == 2
    assert {"model/new_layer.py", "brand/new/deep/dir.py"} <= site.files()
    assert stage(site.transport, local, site.remote_dir).sent == 0


def test_binary_files_arrive_byte_identical(site: Site, tmp_path: Path) -> None:
    local = tmp_path / "proj"
    blobs = {
        "all-bytes.bin": bytes(range(256)) * 64,
        "random.bin": os.urandom(3 * 1024 * 1024 + 17),  # many write requests
        "crlf-and-nul.txt": b"line\r\nnext\x00\xff\xfe\r\n",
        "empty.bin": b"",
        "weights.pt": os.urandom(70_000),
    }
    for rel, content in blobs.items():
        write(local / rel, content)
    result = stage(site.transport, local, site.remote_dir)
    assert result.sent == len(blobs) and result.bytes_sent == sum(map(len, blobs.values()))
    for rel, content in blobs.items():
        assert site.sha256(rel) == hashlib.sha256(content).hexdigest(), rel
    assert site.stat("empty.bin", "%s") == "0"


def test_awkward_names_in_files_and_remote_dir(site: Site, tmp_path: Path) -> None:
    site.remote_dir = f'{site.remote_dir}/my "quoted" dir\'s été $(touch nope)'
    local = tmp_path / "my project"
    names = [
        "with space.py",
        "it's.py",
        'say "hi".txt',
        "données/résumé ünïcødé.txt",
        "日本語/ファイル.py",
        "-starts-with-dash.py",
        "$(touch pwned).sh",
        "`backtick`.txt",
        "semi;colon&amp|pipe.txt",
        "back\\slash.txt",
        "tab\there.txt",
        "star*and?question[1].txt",
        "dir with space/nested 'quote'/file.py",
    ]
    for i, rel in enumerate(names):
        write(local / rel, f"file {i}\n")
    result = stage(site.transport, local, site.remote_dir)
    assert result.sent == len(names)
    assert site.files() == set(names)
    for i, rel in enumerate(names):
        assert site.text(rel) == f"file {i}\n", rel
    assert stage(site.transport, local, site.remote_dir).sent == 0
    (local / "it's.py").unlink()
    assert stage(site.transport, local, site.remote_dir, delete=True).deleted == 1
    assert site.files() == set(names) - {"it's.py"}
    assert "nope" not in site.transport.run(["ls", "-A", "."]).stdout.split("\n")


# --------------------------------------------------------------------------------------------
# Deleting, ignoring, links
# --------------------------------------------------------------------------------------------


def test_delete_removes_what_was_deleted_locally(site: Site, tmp_path: Path) -> None:
    local = project(tmp_path / "proj")
    write(local / "old/module/a.py", "a\n")
    write(local / "old/module/b.py", "b\n")
    write(local / "keep/empty-after.py", "c\n")
    stage(site.transport, local, site.remote_dir)
    # Things the job wrote on the site next to the code, which the patterns exclude.
    site.transport.put_text(site.path("data/downloaded.npy"), "data\n")
    site.transport.put_text(site.path("wandb/run-2/log.txt"), "log\n")
    site.transport.put_text(site.path("out/model.ckpt"), "ckpt\n")

    (local / "train.py").unlink()
    for rel in ("old/module/a.py", "old/module/b.py", "keep/empty-after.py"):
        (local / rel).unlink()
    (local / "old/module").rmdir()
    (local / "old").rmdir()

    kept = stage(site.transport, local, site.remote_dir)  # delete=False: nothing removed
    assert kept.deleted == 0 and "train.py" in site.files()

    result = stage(site.transport, local, site.remote_dir, delete=True)
    assert (result.deleted, result.sent) == (4, 0)
    remaining = site.files()
    assert "train.py" not in remaining and not any(p.startswith("old/") for p in remaining)
    assert {"data/downloaded.npy", "wandb/run-2/log.txt", "out/model.ckpt"} <= remaining
    dirs = site.transport.run(["find", site.remote_dir, "-type", "d", "-printf", "%P\\n"]).stdout.split()
    assert "old" not in dirs and "old/module" not in dirs  # emptied directories go too
    assert "keep" in dirs  # still exists locally (empty): left alone
    assert stage(site.transport, local, site.remote_dir, delete=True, follow_symlinks=True).deleted == 0


def test_gpuhubignore_and_extra_excludes(site: Site, tmp_path: Path) -> None:
    local = project(tmp_path / "proj")
    write(
        local / ".gpuhubignore",
        "# large things that live on the cluster already\n\nsecret*\n/build/\nlogs/\n   results/*.csv  \n*.tmp\n",
    )
    write(local / "secret.env", "TOKEN=1\n")
    write(local / "configs/secrets.yaml", "k: v\n")
    write(local / "build/lib/x.so", "elf")
    write(local / "src/build/keep.py", "# /build/ is anchored to the top\n")
    write(local / "logs/today.log", "log")
    write(local / "results/a.csv", "1,2\n")
    write(local / "results/summary.md", "# kept\n")
    write(local / "scratch.tmp", "t")
    write(local / "outputs/run1.txt", "out")
    result = stage(site.transport, local, site.remote_dir, extra_excludes=["outputs"])
    assert site.files() == EXPECTED | {".gpuhubignore", "src/build/keep.py", "results/summary.md"}
    assert result.sent == len(EXPECTED) + 3


def test_custom_excludes_replace_the_defaults(site: Site, tmp_path: Path) -> None:
    local = tmp_path / "proj"
    write(local / "data/x.csv", "1\n")
    write(local / "main.py", "pass\n")
    write(local / "big.bin", "b")
    stage(site.transport, local, site.remote_dir, excludes=["*.bin"])
    assert site.files() == {"data/x.csv", "main.py"}
    assert "data" in DEFAULT_EXCLUDES


def test_symlinks(site: Site, tmp_path: Path) -> None:
    local = tmp_path / "proj"
    write(local / "real.py", "real\n")
    write(tmp_path / "outside/shared.py", "shared\n")
    write(tmp_path / "outside/datasets/big.npy", "big")
    (local / "alias.py").symlink_to("real.py")
    (local / "shared.py").symlink_to(tmp_path / "outside/shared.py")
    (local / "datasets").symlink_to(tmp_path / "outside/datasets")
    (local / "dangling.py").symlink_to(tmp_path / "nowhere.py")
    with pytest.raises(StageError, match=r"shared\.py is a symbolic link"):  # outside: asked for explicitly
        stage(site.transport, local, site.remote_dir)
    result = stage(site.transport, local, site.remote_dir, follow_symlinks=True)
    assert site.files() == {"real.py", "alias.py", "shared.py"}
    assert site.text("alias.py") == "real\n" and site.text("shared.py") == "shared\n"
    assert result.links_skipped == ("dangling.py", "datasets")
    # A directory of the same name made on the site (the job's own dataset link) is never deleted.
    site.transport.put_text(site.path("datasets/cached.npy"), "c")
    assert stage(site.transport, local, site.remote_dir, delete=True, follow_symlinks=True).deleted == 0
    assert "datasets/cached.npy" in site.files()


# --------------------------------------------------------------------------------------------
# Errors and the default remote directory
# --------------------------------------------------------------------------------------------


def test_missing_or_bad_local_dir_is_a_clear_error(site: Site, tmp_path: Path) -> None:
    with pytest.raises(StageError) as info:
        stage(site.transport, tmp_path / "no-such-project", site.remote_dir)
    assert isinstance(info.value, GpuhubError) and info.value.exit_code == 2
    assert info.value.message == f"cannot stage {tmp_path / 'no-such-project'}: no such directory"
    not_dir = write(tmp_path / "file.py")
    with pytest.raises(StageError, match=r"not a directory$") as info:
        stage(site.transport, not_dir, site.remote_dir)
    assert info.value.exit_code == 2 and "\n" not in info.value.message
    for bad in ("~", "~/", ".", "/", "a/..", ""):
        with pytest.raises(StageError, match="refusing to stage into"):
            stage(site.transport, tmp_path, bad)


def test_transfer_failure_names_the_file(site: Site, tmp_path: Path) -> None:
    local = tmp_path / "proj"
    write(local / "ok.py", "fine\n")
    write(local / "clash.py", "a file here\n")
    # On the site, clash.py is a non-empty directory: the file cannot replace it.
    site.transport.put_text(site.path("clash.py/inside.txt"), "x")
    with pytest.raises(GpuhubError) as info:
        stage(site.transport, local, site.remote_dir)
    assert isinstance(info.value, TransportError) and info.value.exit_code == 1
    message = info.value.message
    assert "cannot upload" in message and "clash.py" in message and "ok.py" not in message
    leftovers = [p for p in site.files() if p.endswith(".gpuhub-tmp")]
    assert leftovers == []  # the temporary copy was cleaned up
    # With delete=True the stale directory goes, and the file takes its place.
    result = stage(site.transport, local, site.remote_dir, delete=True)
    assert result.deleted == 1 and site.text("clash.py") == "a file here\n"


def test_remote_path_that_is_a_file(site: Site, tmp_path: Path) -> None:
    site.transport.put_text(site.remote_dir, "I am a file\n")
    write(tmp_path / "proj/a.py")
    with pytest.raises(GpuhubError, match="exists and is not a directory"):
        stage(site.transport, tmp_path / "proj", site.remote_dir)


def test_default_remote_dir(home: Path, tmp_path: Path) -> None:
    local = project(tmp_path / "My Project!")
    name = remote_dir_for(local)
    assert name == remote_dir_for(Path(str(local) + "/")) == remote_dir_for(local / "model" / "..")
    prefix, _, digest = name.rpartition("-")
    assert prefix == "gpuhub-stage/My_Project" and len(digest) == 8 and int(digest, 16) >= 0
    write(tmp_path / "elsewhere/My Project!/a.py")
    assert remote_dir_for(tmp_path / "elsewhere/My Project!") != name  # same name, other checkout
    result = stage(LocalTransport(), local)
    assert result.remote_dir == name
    assert {str(p.relative_to(home / name)) for p in (home / name).rglob("*") if p.is_file()} == EXPECTED
    assert stage(LocalTransport(), local, f"~/{name}").sent == 0  # ~/ means the same place


# --------------------------------------------------------------------------------------------
# The transports' put_file
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("generic", [False, True], ids=["own", "generic"])
def test_put_file(site: Site, tmp_path: Path, generic: bool) -> None:
    """put_file of each transport, and the generic run()-based one every Transport inherits."""
    put = (lambda *a, **k: Transport.put_file(site.transport, *a, **k)) if generic else site.transport.put_file
    content = os.urandom(100_000) + b"\0\r\n"
    src = write(tmp_path / "src.bin", content, mode=0o640)
    put(str(src), f"~/{site.remote_dir}/a b/c'd/file.bin", mtime=1_600_000_000.7)
    assert site.sha256("a b/c'd/file.bin") == hashlib.sha256(content).hexdigest()
    assert site.stat("a b/c'd/file.bin", "%a %Y") == "640 1600000000"
    put(str(write(src, b"second")), site.path("a b/c'd/file.bin"), mode=0o600)
    assert site.text("a b/c'd/file.bin") == "second" and site.stat("a b/c'd/file.bin", "%a") == "600"
    assert site.transport.run(["ls", "-A", site.path("a b/c'd")]).stdout == "file.bin\n"  # no temp file left
    with pytest.raises(TransportError, match=r"cannot (read|upload) .*missing\.bin"):
        put(str(tmp_path / "missing.bin"), site.path("missing.bin"))


def test_put_files_stops_at_a_missing_file_and_stays_usable(site: Site, tmp_path: Path) -> None:
    srcs = [write(tmp_path / f"f{i}.txt", f"{i}\n") for i in range(5)]
    uploads = [Upload(str(s), site.path(f"ok/{s.name}")) for s in srcs]
    uploads.insert(2, Upload(str(tmp_path / "gone.txt"), site.path("ok/gone.txt")))
    with pytest.raises(TransportError, match=r"cannot upload .*gone\.txt"):
        site.transport.put_files(uploads)
    assert site.transport.run(["echo", "still usable"]).stdout == "still usable\n"
    site.transport.put_files(uploads[:2])
    assert {"ok/f0.txt", "ok/f1.txt"} <= site.files()


@pytest.mark.ssh
@pytest.mark.parametrize("site", ["ssh"], indirect=True)
def test_sftp_one_by_one_fallback(site: Site, tmp_path: Path) -> None:
    """The plain SFTP path used when paramiko lacks the request internals the pipeline uses."""
    uploads = [
        Upload(
            str(write(tmp_path / f"f{i}.bin", os.urandom(40_000 * i))), site.path(f"d{i % 2}/f {i}.bin"), 1.6e9, 0o700
        )
        for i in range(4)
    ]
    with site.transport._sftp_client() as sftp:  # type: ignore[attr-defined]
        site.transport._put_files_one_by_one(sftp, uploads)  # type: ignore[attr-defined]
    for upload in uploads:
        rel = upload.remote_path.removeprefix(site.remote_dir + "/")
        assert site.sha256(rel) == hashlib.sha256(Path(upload.local_path).read_bytes()).hexdigest()
        assert site.stat(rel, "%a %Y") == "700 1600000000"


# --------------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------------


def test_many_small_files(site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    local = tmp_path / "proj"
    count = 300
    for i in range(count):
        write(local / f"pkg{i % 12}/sub{i % 3}/module_{i}.py", f"VALUE = {i}\n" + "# padding\n" * (i % 40))
    start = time.monotonic()
    first = stage(site.transport, local, site.remote_dir)
    first_s = time.monotonic() - start
    start = time.monotonic()
    second = stage(site.transport, local, site.remote_dir)
    second_s = time.monotonic() - start
    assert (first.sent, second.sent, second.skipped) == (count, 0, count)
    assert len(site.files()) == count
    with capsys.disabled():
        print(
            f"\nstaging {count} small files ({first.bytes_sent} bytes) over {site.kind}: "
            f"first {first_s:.2f} s, unchanged {second_s:.2f} s"
        )


# --------------------------------------------------------------------------------------------
# Hostile or careless project directories
# --------------------------------------------------------------------------------------------


def test_link_outside_the_directory_is_refused_unless_asked(site: Site, tmp_path: Path) -> None:
    local = tmp_path / "proj"
    write(local / "train.py", "x\n")
    write(tmp_path / "dot-ssh/id_ed25519", "PRIVATE KEY\n")
    (local / "key").symlink_to(tmp_path / "dot-ssh/id_ed25519")
    with pytest.raises(StageError, match=r"key is a symbolic link to .*id_ed25519.*--follow-symlinks"):
        stage(site.transport, local, site.remote_dir)
    assert not site.transport.run(["test", "-e", site.remote_dir], check=False).ok  # nothing was sent
    assert check_local(local, follow_symlinks=True) == 2
    stage(site.transport, local, site.remote_dir, follow_symlinks=True)
    assert site.text("key") == "PRIVATE KEY\n"


def test_gpuhubignore_with_a_byte_order_mark(site: Site, tmp_path: Path) -> None:
    local = tmp_path / "proj"
    write(local / "train.py", "x\n")
    write(local / "secret.env", "TOKEN=1\n")
    (local / ".gpuhubignore").write_bytes("\ufeffsecret.env\n".encode())
    stage(site.transport, local, site.remote_dir)
    assert site.files() == {"train.py", ".gpuhubignore"}


def test_name_that_is_not_utf8_is_refused_and_never_breaks_a_later_stage(site: Site, tmp_path: Path) -> None:
    local = tmp_path / "proj"
    write(local / "train.py", "x\n")
    bad = os.fsdecode(b"caf\xe9.txt")
    (local / bad).write_text("latin-1 name\n")
    with pytest.raises(StageError, match=r"caf\\xe9.txt: its name is not UTF-8"):
        stage(site.transport, local, site.remote_dir)
    stage(site.transport, local, site.remote_dir, extra_excludes=["caf*.txt"])
    # A file the job itself made with such a name on the site: the next stage still works.
    site.transport.run(["sh", "-c", 'printf x > "$1"/"$(printf "r\\351sultat")"', "sh", site.remote_dir])
    again = stage(site.transport, local, site.remote_dir, extra_excludes=["caf*.txt"])
    assert again.sent == 0
