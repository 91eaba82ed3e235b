"""The Debian package (packaging/build-deb.sh, docs/packaging.md), built from the binaries the
suite already built (.build/debug, or wherever SIDECAR_BIN points) and installed into a throwaway
root: an overlayfs with the host's / as its read-only lower layer and a fresh tmpfs as its upper
layer, with /proc, /dev, /sys and /run mounted inside. Every file the package scripts write lands
in the upper layer, so after `dpkg --purge` the upper layer shows exactly what was left behind.

Checks: lintian reports no error (and every warning is one docs/packaging.md lists);
`systemd-analyze verify` passes on meshd.service and mesh-sidecar@example.service inside the root
(and fails when a binary the units name is missing, passes again with the no-capture drop-in);
the unit lines name exactly `meshctl capture apply|remove $CAPTURE_ARGS`; the sample env's
CAPTURE_ARGS parse with `meshctl capture print` and its SIDECAR_ARGS with `sidecar ... --check`;
`dpkg -i` installs with the right modes, the user and group mesh with uid/gid 1337 (the sidecars)
and the system user and group meshd (meshd, never 1337), the env files as conffiles, runnable
binaries; meshd run as its unit's user writes a state directory that the sidecars' user cannot
read; `dpkg -r` removes every file but the conffiles; `dpkg --purge` removes those, meshd's state
and both users and groups, leaving only dpkg's and man-db's bookkeeping.

Root only (mounts, chroot, dpkg); skipped with the reason otherwise. About 40 s.
The tests share one installed root and run in file order: the removal test comes last.
"""

import os
import pathlib
import re
import shlex
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time

import pytest

from conftest import ROOT, SIDECAR

BIN_DIR = SIDECAR.parent
BUILD_DEB = ROOT / "packaging" / "build-deb.sh"
DOCS = ROOT / "docs" / "packaging.md"

_missing = [t for t in ("dpkg-deb", "lintian", "systemd-analyze", "chroot", "unshare", "chrpath", "openssl")
            if shutil.which(t) is None]
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: overlay mounts, chroot and dpkg in the throwaway root"),
    pytest.mark.skipif(bool(_missing), reason=f"missing tools: {', '.join(_missing)} (apt-get install lintian chrpath)"),
    pytest.mark.skipif(not all((BIN_DIR / b).exists() for b in ("meshd", "sidecar", "meshctl")),
                       reason=f"meshd, sidecar and meshctl not built in {BIN_DIR} (swift build)"),
]

CONFFILES = {"/etc/mesh/meshd.env", "/etc/mesh/sidecar/example.env.sample"}

# What may stay in the overlay's upper layer after `dpkg --purge` (relative to the root), beyond
# directories the host already has and files byte-identical to the host's:
ALLOWED_LEFTOVERS = [
    re.compile(r"var/lib/dpkg/.*"),        # dpkg's database (status, status-old, locks, triggers, info/)
    re.compile(r"var/log/dpkg\.log"),      # dpkg's log
    re.compile(r"var/cache/man/.*"),       # man-db's trigger: its index, rebuilt when man pages come and go
    # adduser/deluser go through shadow's tools, which keep the previous files and a lock file
    # (for mesh and meshd alike: the files themselves come back byte-identical to the host's)
    re.compile(r"etc/(passwd|group|shadow|gshadow)-"),
    re.compile(r"etc/\.pwd\.lock"),
]


def run(cmd, timeout=60, check=True, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{shlex.join(map(str, cmd))} exited {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def env_file(text):
    """KEY="VALUE" lines of a systemd EnvironmentFile (comments and blank lines skipped)."""
    values = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r'([A-Za-z_][A-Za-z0-9_]*)="([^"\\$`]*)"', line)
        assert m, f"line {n}: not KEY=\"VALUE\" (no quotes, backslashes or $ inside): {line!r}"
        values[m.group(1)] = m.group(2)
    return values


def unit_file(text):
    """{(section, key): [values]} of a systemd unit file."""
    entries, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault((section, key), []).append(value)
    return entries


def package_contents(deb):
    """(files, directories) the .deb holds, as absolute paths."""
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as p:
        with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
            members = [("/" + m.name.removeprefix(".").strip("/"), m.isdir(), m.isfile()) for m in tar]
    files = [n for n, _, f in members if f]
    dirs = [n for n, d, _ in members if d and n != "/"]
    assert len(files) + len(dirs) + 1 == len(members), "the package holds links or special files"
    return files, dirs


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    out = tmp_path_factory.mktemp("deb")
    p = run(["bash", str(BUILD_DEB), "--bin-dir", str(BIN_DIR), "--out", str(out), "--xz-level", "1"], timeout=120)
    path = pathlib.Path(p.stdout.strip().splitlines()[-1])
    assert path.parent == out and re.fullmatch(r"swift-mesh_[0-9.]+(\+git[0-9a-f]+)?-1_amd64\.deb", path.name), path
    return path


class ThrowawayRoot:
    """An overlay of the host's / (read-only lower) and a tmpfs upper layer, chroot-able."""

    def __init__(self):
        self.base = pathlib.Path(tempfile.mkdtemp(prefix="deb-root-"))
        self.root = self.base / "root"
        self.upper = self.base / "upper"
        self.mounts = []

    def mount(self, *args, target):
        run(["mount", *args, str(target)])
        self.mounts.append(target)

    def setup(self):
        self.mount("-t", "tmpfs", "-o", "mode=0700", "tmpfs", target=self.base)
        run(["mount", "--make-private", str(self.base)])   # nothing below propagates to the host
        for d in ("upper", "work", "root"):
            (self.base / d).mkdir()
        self.mount("-t", "overlay", "overlay", "-o",
                   f"lowerdir=/,upperdir={self.upper},workdir={self.base / 'work'}", target=self.root)
        self.mount("-t", "proc", "proc", target=self.root / "proc")
        self.mount("--bind", "/dev", target=self.root / "dev")
        self.mount("-t", "sysfs", "sysfs", target=self.root / "sys")
        self.mount("-t", "tmpfs", "tmpfs", target=self.root / "run")

    def teardown(self):
        for target in reversed(self.mounts):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], capture_output=True)
        self.mounts.clear()
        shutil.rmtree(self.base, ignore_errors=True)

    def path(self, p):
        return self.root / str(p).lstrip("/")

    def chroot(self, *cmd, timeout=60, check=True, net=False):
        prefix = [] if net else ["unshare", "--net"]   # nothing run in the root reaches the network
        return run([*prefix, "chroot", str(self.root), *cmd], timeout=timeout, check=check)

    def upper_entries(self):
        """Every path in the upper layer, relative, with what it is."""
        entries = {}
        for dirpath, dirnames, filenames in os.walk(self.upper):
            for name in dirnames + filenames:
                full = pathlib.Path(dirpath) / name
                entries[str(full.relative_to(self.upper))] = os.lstat(full)
        return entries


@pytest.fixture(scope="module")
def installed(deb):
    r = ThrowawayRoot()
    try:
        r.setup()
        r.before = r.upper_entries()
        # the .deb was written before the overlay was mounted: the lower layer shows it
        p = r.chroot("dpkg", "-i", str(deb), timeout=120)
        r.install_log = p.stdout + p.stderr
        yield r
    finally:
        r.teardown()


@pytest.fixture
def fresh_root(deb):   # the .deb exists before the overlay is mounted over /
    r = ThrowawayRoot()
    try:
        r.setup()
        yield r
    finally:
        r.teardown()


def test_postinst_refuses_uid_1337_held_by_another_user(fresh_root, deb):
    """The capture rules exempt uid/gid 1337: a mesh user with another uid would be captured."""
    r = fresh_root
    r.chroot("useradd", "--uid", "1337", "--no-create-home", "--shell", "/usr/sbin/nologin", "squatter")
    p = r.chroot("dpkg", "-i", str(deb), timeout=120, check=False)
    assert p.returncode != 0
    assert "swift-mesh: uid 1337, which the mesh needs for its user mesh, is taken by user squatter" in p.stderr, p.stderr
    assert not [l for l in r.path("/etc/passwd").read_text().splitlines() if l.startswith("mesh:")]
    status = r.chroot("dpkg-query", "-W", "-f=${Status}", "swift-mesh").stdout
    assert status == "install ok half-configured", status


def test_postinst_refuses_mesh_in_group_meshd(fresh_root, deb):
    """meshd's state directory is meshd:meshd 0750: a sidecar (user mesh) in group meshd could read
    the CA keys there, so postinst refuses to go on, naming the membership and the fix."""
    r = fresh_root
    r.chroot("groupadd", "--system", "meshd")
    r.chroot("groupadd", "--gid", "1337", "mesh")
    r.chroot("useradd", "--uid", "1337", "--gid", "mesh", "--groups", "meshd", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "mesh")
    p = r.chroot("dpkg", "-i", str(deb), timeout=120, check=False)
    assert p.returncode != 0
    assert ("swift-mesh: user mesh (every sidecar) is a member of group meshd, which would let a sidecar "
            "read meshd's CA keys in /var/lib/mesh; remove it (gpasswd -d mesh meshd), then run: "
            "dpkg --configure swift-mesh") in p.stderr, p.stderr
    status = r.chroot("dpkg-query", "-W", "-f=${Status}", "swift-mesh").stdout
    assert status == "install ok half-configured", status


def test_lintian_reports_no_error(deb):
    p = run(["lintian", "--fail-on", "error", "--tag-display-limit", "0", str(deb)], timeout=120, check=False)
    lines = [l for l in (p.stdout + p.stderr).splitlines() if re.match(r"[EWIXPO]: ", l)]
    errors = [l for l in lines if l.startswith("E: ")]
    assert p.returncode == 0 and not errors, f"lintian rc {p.returncode}:\n" + "\n".join(lines)
    # every warning that stays is one docs/packaging.md names, with why
    docs = DOCS.read_text()
    undocumented = sorted({l.split()[2] for l in lines if l.startswith("W: ")} - set(re.findall(r"`([a-z0-9-]+)`", docs)))
    assert not undocumented, f"lintian warnings not listed in docs/packaging.md: {undocumented}"


def test_installs_with_user_modes_and_conffiles(installed, deb):
    r = installed
    assert "Setting up swift-mesh" in r.install_log
    # the mesh user and group: uid and gid 1337, in the root's own files (not the host's)
    passwd = [l.split(":") for l in r.path("/etc/passwd").read_text().splitlines()]
    group = [l.split(":") for l in r.path("/etc/group").read_text().splitlines()]
    mesh_user = [e for e in passwd if e[0] == "mesh"]
    mesh_group = [e for e in group if e[0] == "mesh"]
    assert len(mesh_user) == 1 and mesh_user[0][2:4] == ["1337", "1337"], mesh_user
    assert mesh_user[0][5] == "/nonexistent" and mesh_user[0][6] == "/usr/sbin/nologin", mesh_user
    assert len(mesh_group) == 1 and mesh_group[0][2] == "1337", mesh_group
    # meshd's own system user and group: any free system id but never the sidecars' 1337, and
    # nobody else in the group (a sidecar in it could read meshd's state directory, mode 0750)
    meshd_user = [e for e in passwd if e[0] == "meshd"]
    meshd_group = [e for e in group if e[0] == "meshd"]
    assert len(meshd_user) == 1 and len(meshd_group) == 1, (meshd_user, meshd_group)
    uid, gid = int(meshd_user[0][2]), int(meshd_user[0][3])
    assert 0 < uid < 1000 and uid != 1337, f"meshd's uid {uid}: not a system uid other than 1337"
    assert gid == int(meshd_group[0][2]) and gid not in (0, 1337), f"meshd's group {meshd_group[0]}, primary gid {gid}"
    assert meshd_group[0][3] == "", f"group meshd has members: {meshd_group[0][3]}"
    assert meshd_user[0][5] == "/var/lib/mesh" and meshd_user[0][6] == "/usr/sbin/nologin", meshd_user
    for e in pathlib.Path("/etc/passwd").read_text().splitlines():
        assert not e.startswith(("mesh:", "meshd:")), "the host's /etc/passwd got a user: the root is not throwaway"

    # files, owners and modes
    expected = {
        "/usr/bin/meshd": 0o755, "/usr/bin/sidecar": 0o755, "/usr/bin/meshctl": 0o755,
        "/lib/systemd/system/meshd.service": 0o644, "/lib/systemd/system/mesh-sidecar@.service": 0o644,
        "/etc/mesh/meshd.env": 0o644, "/etc/mesh/sidecar/example.env.sample": 0o644,
        "/usr/share/man/man1/meshd.1.gz": 0o644, "/usr/share/man/man1/sidecar.1.gz": 0o644,
        "/usr/share/man/man1/meshctl.1.gz": 0o644,
        "/usr/share/doc/swift-mesh/copyright": 0o644, "/usr/share/doc/swift-mesh/changelog.Debian.gz": 0o644,
        "/usr/share/doc/swift-mesh/examples/no-capture.conf": 0o644,
        "/usr/share/lintian/overrides/swift-mesh": 0o644,
    }
    for path, mode in expected.items():
        st = os.stat(r.path(path))
        assert stat.S_ISREG(st.st_mode), path
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, 0, 0), \
            f"{path}: mode {oct(stat.S_IMODE(st.st_mode))} owner {st.st_uid}:{st.st_gid}"
    files, dirs = package_contents(deb)
    assert set(expected) <= set(files), sorted(set(expected) - set(files))
    for path in files:
        st = os.lstat(r.path(path))
        mode = 0o755 if path.startswith("/usr/bin/") else 0o644
        assert stat.S_ISREG(st.st_mode) and (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, 0, 0), \
            f"{path}: mode {oct(st.st_mode)} owner {st.st_uid}:{st.st_gid}"
    for path in dirs:
        if not os.path.exists(path):   # the directories the package creates (not the host's)
            st = os.lstat(r.path(path))
            assert stat.S_ISDIR(st.st_mode) and (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, 0), path

    # the env files are conffiles, and nothing else is
    conffiles = r.chroot("dpkg-query", "-W", "-f=${Conffiles}", "swift-mesh").stdout.split("\n")
    assert {l.split()[0] for l in conffiles if l.strip()} == CONFFILES

    # the binaries run from the root, with no toolchain: a bundled Swift runtime is the package's
    for b in ("meshctl", "sidecar", "meshd"):
        p = r.chroot(f"/usr/bin/{b}", "--help")
        assert p.stdout.startswith(f"{b}: "), p.stdout[:200]
    for line in r.chroot("ldd", "/usr/bin/sidecar").stdout.splitlines():
        assert "/opt/" not in line and "not found" not in line, line
    # man pages: gzip'd roff from --help
    man = r.chroot("man", "--warnings", "-l", "-Tutf8", "/usr/share/man/man1/meshctl.1.gz", check=True)
    assert "capture apply|remove|print" in man.stdout and not man.stderr.strip(), man.stderr


def test_units_verify_in_the_root(installed):
    r = installed
    for unit in ("/lib/systemd/system/meshd.service", "mesh-sidecar@example.service"):
        p = r.chroot("systemd-analyze", "verify", unit, check=False)
        assert p.returncode == 0 and not p.stderr.strip(), f"{unit}: rc {p.returncode}: {p.stderr}"
    # verify resolves the binaries: without meshctl the template fails, and the no-capture
    # drop-in (which empties ExecStartPre/ExecStopPost) makes it pass again
    meshctl = r.path("/usr/bin/meshctl")
    dropin = r.path("/etc/systemd/system/mesh-sidecar@plain.service.d/no-capture.conf")
    meshctl.rename(meshctl.with_name("meshctl.away"))
    try:
        p = r.chroot("systemd-analyze", "verify", "mesh-sidecar@example.service", check=False)
        assert p.returncode != 0 and "/usr/bin/meshctl" in p.stderr, p.stderr
        dropin.parent.mkdir(parents=True)
        shutil.copy(r.path("/usr/share/doc/swift-mesh/examples/no-capture.conf"), dropin)
        p = r.chroot("systemd-analyze", "verify", "mesh-sidecar@plain.service", check=False)
        assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    finally:
        meshctl.with_name("meshctl.away").rename(meshctl)
        shutil.rmtree(dropin.parent, ignore_errors=True)


def test_unit_lines_name_the_capture_commands_and_run_as_mesh(installed):
    sidecar = unit_file(installed.path("/lib/systemd/system/mesh-sidecar@.service").read_text())
    assert sidecar[("Service", "ExecStartPre")] == ["+/usr/bin/meshctl capture apply $CAPTURE_ARGS"]
    assert sidecar[("Service", "ExecStart")] == ["/usr/bin/sidecar $SIDECAR_ARGS"]
    assert sidecar[("Service", "ExecStopPost")] == ["+/usr/bin/meshctl capture remove $CAPTURE_ARGS"]
    assert sidecar[("Service", "EnvironmentFile")] == ["/etc/mesh/sidecar/%i.env"]
    assert sidecar[("Service", "User")] == ["mesh"] and sidecar[("Service", "Group")] == ["mesh"]
    assert ("Service", "PrivateNetwork") not in sidecar   # capture and sidecar share the namespace
    meshd = unit_file(installed.path("/lib/systemd/system/meshd.service").read_text())
    assert meshd[("Service", "ExecStart")] == ["/usr/bin/meshd --state-dir /var/lib/mesh $MESHD_ARGS"]
    assert meshd[("Service", "EnvironmentFile")] == ["/etc/mesh/meshd.env"]
    assert meshd[("Service", "StateDirectory")] == ["mesh"] and meshd[("Service", "StateDirectoryMode")] == ["0750"]
    # meshd runs as its own user, not as the sidecars' mesh (1337): its state holds the CA keys
    assert meshd[("Service", "User")] == ["meshd"] and meshd[("Service", "Group")] == ["meshd"]
    assert meshd[("Service", "Restart")] == ["on-failure"]
    for unit in (sidecar, meshd):
        for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
            assert unit[("Service", key)] == ["yes"], key
        assert unit[("Service", "ProtectSystem")] == ["strict"]
        assert unit[("Service", "CapabilityBoundingSet")] == [""]
    # meshd is not enabled by the package (docs/packaging.md says why)
    assert not list(installed.path("/etc/systemd/system").rglob("meshd.service"))
    assert env_file(installed.path("/etc/mesh/meshd.env").read_text()) == {"MESHD_ARGS": ""}


def test_meshd_state_is_out_of_the_sidecars_reach(installed):
    """meshd started as meshd.service would start it (its User, Group and UMask, in the state
    directory its StateDirectory and StateDirectoryMode name, which systemd creates so owned)
    writes its CA keys and admin token; the sidecars' user (mesh-sidecar@.service's User and
    Group, with its supplementary groups) can neither list the directory nor read one file of
    it, while meshd's user can. The state stays: the purge test checks that purge removes it."""
    r = installed
    meshd = unit_file(r.path("/lib/systemd/system/meshd.service").read_text())
    sidecar = unit_file(r.path("/lib/systemd/system/mesh-sidecar@.service").read_text())
    (user,), (group,) = meshd[("Service", "User")], meshd[("Service", "Group")]
    (umask,), (dir_mode,) = meshd[("Service", "UMask")], meshd[("Service", "StateDirectoryMode")]
    state = "/var/lib/" + meshd[("Service", "StateDirectory")][0]
    argv = [a for a in meshd[("Service", "ExecStart")][0].split() if a != "$MESHD_ARGS"]   # MESHD_ARGS=""
    assert argv[:3] == ["/usr/bin/meshd", "--state-dir", state], argv
    side = f'{sidecar[("Service", "User")][0]}:{sidecar[("Service", "Group")][0]}'
    assert side == "mesh:mesh", side

    r.chroot("install", "-d", "-o", user, "-g", group, "-m", dir_mode, state)
    log = r.base / "meshd.log"   # outside the root
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["unshare", "--net", "bash", "-c", 'ip link set lo up && umask "$1" && exec chroot --userspec="$2" "${@:3}"',
             "bash", umask, f"{user}:{group}", str(r.root), *argv],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not all(r.path(f"{state}/{f}").exists() for f in ("admin-token", "ca-key.pem", "root-cert.pem")):
            assert proc.poll() is None, f"meshd exited {proc.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "meshd wrote no admin-token, ca-key.pem and root-cert.pem in 30 s"
            time.sleep(0.2)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    files = sorted(os.listdir(r.path(state)))
    listing = r.chroot("chroot", f"--userspec={side}", "/", "ls", state, check=False)
    assert listing.returncode != 0 and "Permission denied" in listing.stderr, (listing.stdout, listing.stderr)
    for f in files:
        p = r.chroot("chroot", f"--userspec={side}", "/", "cat", f"{state}/{f}", check=False)
        assert p.returncode != 0 and "Permission denied" in p.stderr, f"{side} read {state}/{f}: {p.stderr}"
    passwd = {e.split(":")[0]: e.split(":") for e in r.path("/etc/passwd").read_text().splitlines()}
    meshd_uid = int(passwd[user][2])
    assert meshd_uid != 1337 and int(passwd["mesh"][2]) == 1337
    st = os.stat(r.path(state))
    assert (st.st_uid, oct(stat.S_IMODE(st.st_mode))) == (meshd_uid, "0o750"), (st.st_uid, oct(st.st_mode))
    assert {"admin-token", "ca-key.pem", "root-cert.pem"} <= set(files), files
    for f in files:
        assert os.stat(r.path(f"{state}/{f}")).st_uid == meshd_uid, f"{state}/{f}: not owned by {user}"
    for secret in ("admin-token", "ca-key.pem"):
        mode = stat.S_IMODE(os.stat(r.path(f"{state}/{secret}")).st_mode)
        assert mode == 0o600, f"{state}/{secret}: mode {oct(mode)}"

    own = r.chroot("chroot", f"--userspec={user}:{group}", "/", "cat", f"{state}/ca-key.pem", check=False)
    assert own.returncode == 0 and "PRIVATE KEY" in own.stdout, own.stderr


def test_sample_capture_args_parse_with_meshctl(installed):
    sample = env_file(installed.path("/etc/mesh/sidecar/example.env.sample").read_text())
    assert set(sample) == {"SIDECAR_ARGS", "CAPTURE_ARGS"}
    capture = sample["CAPTURE_ARGS"].split()   # systemd splits an unbraced $VAR at whitespace
    p = installed.chroot("/usr/bin/meshctl", "capture", "print", *capture)
    # the sample's inbound list took effect: only the app's port goes to the sidecar, never '*'
    assert "-A MESH_INBOUND -p tcp --dport 8080 -j MESH_IN_REDIRECT" in p.stdout, p.stdout
    assert "-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT" not in p.stdout, p.stdout
    # the ports the sidecar uses (its defaults) are the ones the rules name
    assert "--to-ports 15001" in p.stdout and "--to-ports 15006" in p.stdout
    bad = installed.chroot("/usr/bin/meshctl", "capture", "print", *capture, "--inbound-port", "70000", check=False)
    assert bad.returncode == 2 and "--inbound-port" in bad.stderr, bad.stderr


def test_sample_sidecar_args_pass_sidecar_check(installed):
    """`sidecar $SIDECAR_ARGS --check` parses every flag as a start would and reads the files
    they name, then exits 0 without contacting meshd (run with no network at all)."""
    r = installed
    sample = env_file(r.path("/etc/mesh/sidecar/example.env.sample").read_text())
    args = sample["SIDECAR_ARGS"].split()
    root_cert = r.path(args[args.index("--root-cert") + 1])
    token = r.path(args[args.index("--token-file") + 1])
    root_cert.parent.mkdir(parents=True, exist_ok=True)
    key = r.base / "root-key.pem"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(root_cert), "-days", "1", "-subj", "/O=cluster.local"])
    token.write_text("0123456789abcdef.0123456789abcdef\n")
    try:
        try:
            p = r.chroot("/usr/bin/sidecar", *args, "--check", timeout=15, check=False)
        except subprocess.TimeoutExpired as e:
            raise AssertionError("sidecar ... --check did not exit within 15 s: it started instead of "
                                 f"checking\n{(e.stderr or b'').decode(errors='replace')[-1500:]}") from None
        assert p.returncode == 0, f"rc {p.returncode}: {p.stderr[-2000:]}"
        bad = r.chroot("/usr/bin/sidecar", *args, "--bogus-flag", "--check", timeout=15, check=False)
        assert bad.returncode == 2 and "--bogus-flag" in bad.stderr, bad.stderr
    finally:
        token.unlink()
        root_cert.unlink()   # /etc/mesh/root-cert.pem: the admin's copy, in a directory the package made


def test_remove_then_purge_leave_nothing(installed, deb):
    """Last in the file: it removes the package from the shared root."""
    r = installed
    files, dirs = package_contents(deb)
    assert CONFFILES <= set(files) and all(os.path.isfile(r.path(p)) for p in files)

    r.chroot("dpkg", "-r", "swift-mesh", timeout=120)
    left = [p for p in files if os.path.lexists(r.path(p))]
    assert sorted(left) == sorted(CONFFILES), f"dpkg -r left {sorted(set(left) - CONFFILES)}"
    new_dirs = [d for d in dirs if not os.path.exists(d)]   # the package's, not the host's
    left_dirs = [d for d in new_dirs if os.path.isdir(r.path(d))]
    assert sorted(left_dirs) == ["/etc/mesh", "/etc/mesh/sidecar"], left_dirs
    status = r.chroot("dpkg-query", "-W", "-f=${Status}", "swift-mesh").stdout
    assert status == "deinstall ok config-files", status

    r.chroot("dpkg", "--purge", "swift-mesh", timeout=120)
    assert not os.path.lexists(r.path("/etc/mesh"))
    assert not os.path.lexists(r.path("/var/lib/mesh"))   # meshd's state (the test above ran meshd)
    for db in ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow"):
        kept = [l for l in r.path(db).read_text().splitlines() if l.startswith(("mesh:", "meshd:"))]
        assert not kept, f"purge left {db}: {kept}"
    assert r.chroot("dpkg-query", "-W", "swift-mesh", check=False).returncode != 0

    # what the upper layer holds now beyond what it held before the install
    leftovers = []
    for rel, st in sorted(r.upper_entries().items()):
        if rel in r.before:
            continue
        host = pathlib.Path("/") / rel
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            if not any(a.fullmatch(rel) for a in ALLOWED_LEFTOVERS):
                leftovers.append(f"{rel} (deleted from the host's files)")
        elif stat.S_ISDIR(st.st_mode):
            if not host.is_dir() and not any(a.fullmatch(rel) for a in ALLOWED_LEFTOVERS):
                leftovers.append(f"{rel}/ (a new directory)")
        elif any(a.fullmatch(rel) for a in ALLOWED_LEFTOVERS):
            continue
        elif host.is_file() and not host.is_symlink() and stat.S_ISREG(st.st_mode):
            same = (host.read_bytes() == (r.upper / rel).read_bytes()
                    and stat.S_IMODE(host.stat().st_mode) == stat.S_IMODE(st.st_mode))
            if not same:
                leftovers.append(f"{rel} (differs from the host's)")
        else:
            leftovers.append(rel)
    assert not leftovers, "left behind after purge:\n" + "\n".join(leftovers)
