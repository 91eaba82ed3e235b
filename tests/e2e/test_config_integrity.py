"""The config in force is always a good one, and the operator always knows what happened
(issue 14): meshd refuses at apply what a sidecar would refuse, naming file, line, document and
field; an apply that changes nothing says so and pushes nothing; errors for several files name
the right one; oversized input gets 413 with its limit; control bytes never reach a terminal or a
log raw; state files that cannot be read stop meshd naming them."""

import re
import subprocess

from conftest import MESHCTL, MESHD, Meshd, curl, free_port, wait_until
from test_config_push import SPLIT, mesh

SECOND_VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-too}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
"""

WILDCARD = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild}
spec:
  hosts: ["*.example.com"]
  http:
  - route:
    - destination: {host: reviews}
"""


def version(m):
    return int(m.ctl("status").stdout.splitlines()[0].split()[-1])


def pushes_applied(proc):
    return len(re.findall(r"config version \d+ from meshd applied", proc.log_path.read_text()))


def test_meshd_refuses_what_sidecars_would_refuse_and_keeps_the_config_in_force(procs, tmp_path):
    m, outbound, _ = mesh(procs)
    good = tmp_path / "split.yaml"
    good.write_text(SPLIT.replace("W1", "0").replace("W2", "100"))
    m.ctl("apply", "-f", good, "--wait")
    before = version(m)
    # A second VirtualService for a routed host: refused by meshd at apply (it used to be stored,
    # then NACKed by every sidecar, and every later change NACKed with it).
    other = tmp_path / "other.yaml"
    other.write_text(SECOND_VS)
    r = m.ctl("apply", "-f", other, check=False)
    assert r.returncode == 1, r
    assert ("other.yaml:5: document 1: VirtualService default/reviews-too: spec.hosts[0]: "
            "host \"reviews\" is already routed by VirtualService default/reviews") in r.stderr, r.stderr
    # A wildcard host: the cluster name used to be written unquoted and read back as a YAML alias.
    wild = tmp_path / "wild.yaml"
    wild.write_text(WILDCARD)
    r = m.ctl("apply", "-f", wild, check=False)
    assert r.returncode == 1, r
    assert "wild.yaml:5: document 1: VirtualService default/wild: spec.hosts[0]: wildcard hosts are not supported" in r.stderr, r.stderr
    assert version(m) == before
    assert m.routes() == [("VirtualService", "default/reviews"), ("DestinationRule", "default/reviews")]
    assert "NACK" not in m.ctl("status").stdout
    for _ in range(10):
        assert curl("-s", "-H", "Host: reviews", f"http://127.0.0.1:{outbound}/").stdout == b"hello from v2\n"
    # The next valid change is applied and acknowledged by every sidecar.
    good.write_text(SPLIT.replace("W1", "100").replace("W2", "0"))
    r = m.ctl("apply", "-f", good, "--wait")
    assert "acknowledged by 3 sidecar(s)" in r.stdout, r.stdout
    status = m.ctl("status").stdout
    assert "NACK" not in status and status.count("\tACK\t") == 3, status
    for _ in range(10):
        assert curl("-s", "-H", "Host: reviews", f"http://127.0.0.1:{outbound}/").stdout == b"hello from v1\n"


def test_an_apply_that_changes_nothing_says_so_and_pushes_nothing(procs, tmp_path):
    m = Meshd(procs)
    app = procs.app("v1")
    p, _, _, _ = m.sidecar("reviews-v1", "reviews", app_port=app, extra=["--label", "version=v1"])
    wait_until(lambda: pushes_applied(p) >= 1, what="first push")
    f = tmp_path / "split.yaml"
    f.write_text(SPLIT.replace("W1", "100").replace("W2", "0"))
    r = m.ctl("apply", "-f", f, "--wait")
    assert r.stdout.startswith("applied: version "), r.stdout
    assert "  VirtualService default/reviews: created\n" in r.stdout and "  DestinationRule default/reviews: created\n" in r.stdout
    v, pushes = version(m), pushes_applied(p)
    # The same documents again.
    r = m.ctl("apply", "-f", f)
    assert r.stdout.startswith(f"unchanged: version {v} "), r.stdout
    assert "  VirtualService default/reviews: unchanged\n" in r.stdout
    # An empty file and a comment-only file.
    empty, comments = tmp_path / "empty.yaml", tmp_path / "comments.yaml"
    empty.write_text("")
    comments.write_text("# nothing here yet\n---\n# still nothing\n")
    for x in (empty, comments):
        r = m.ctl("apply", "-f", x)
        assert r.stdout == f"unchanged: version {v} (no document in {x})\n", r.stdout
    # One document changed among two: only that one is reported configured.
    f.write_text(SPLIT.replace("W1", "90").replace("W2", "10"))
    r = m.ctl("apply", "-f", f)
    assert r.stdout.startswith(f"applied: version {v + 1}\n"), r.stdout
    assert "  VirtualService default/reviews: configured\n  DestinationRule default/reviews: unchanged\n" in r.stdout, r.stdout
    wait_until(lambda: pushes_applied(p) == pushes + 1, what="the one push")
    # Deleting what is not in force: "not found", exit 1, nothing pushed; --ignore-not-found: exit 0.
    ghost = tmp_path / "ghost.yaml"
    ghost.write_text(SECOND_VS)
    r = m.ctl("delete", "-f", ghost, check=False)
    assert r.returncode == 1 and "not found: VirtualService default/reviews-too" in r.stderr, r
    r = m.ctl("delete", "-f", ghost, "--ignore-not-found")
    assert r.stdout == "not found (ignored): VirtualService default/reviews-too\n", r.stdout
    assert version(m) == v + 1
    # A delete of one present and one absent document deletes the one and names the other.
    both = tmp_path / "both.yaml"
    both.write_text(f.read_text().split("---")[0] + "---\n" + SECOND_VS)
    r = m.ctl("delete", "-f", both, check=False)
    assert r.returncode == 1 and "not found: VirtualService default/reviews-too" in r.stderr, r
    assert r.stdout == f"deleted: version {v + 2}\n  VirtualService default/reviews: deleted\n", r.stdout
    wait_until(lambda: pushes_applied(p) == pushes + 2, what="the push of the delete")
    # A last real change, pushed after everything above: its push is the third, so none of the
    # unchanged applies, empty files or deletes of what was not in force pushed anything.
    f.write_text(SPLIT.replace("W1", "80").replace("W2", "20"))
    m.ctl("apply", "-f", f, "--wait")
    wait_until(lambda: pushes_applied(p) >= pushes + 3, what="the last push")
    assert pushes_applied(p) == pushes + 3, p.log_path.read_text()[-2000:]


def test_errors_name_the_file_and_line_of_each_document(procs, tmp_path):
    m = Meshd(procs)
    d = tmp_path / "dir"
    d.mkdir()
    (d / "a.yaml").write_text(SPLIT.replace("W1", "100").replace("W2", "0"))
    # b.yaml: a comment, then a document whose weight is out of range at line 7.
    (d / "b.yaml").write_text("""# ratings
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http: [{route: [{destination: {host: ratings}, weight: 101}]}]
""")
    r = m.ctl("apply", "-f", d, check=False)
    assert r.returncode == 1
    assert f"{d}/b.yaml:7: document 1: spec.http[0].route[0].weight:" in r.stderr, r.stderr
    assert "a.yaml" not in r.stderr
    # An error of the set (a subset no DestinationRule defines), found only when the files are
    # put together, names the document's own file and line, not the concatenation's.
    (d / "b.yaml").write_text("""# ratings
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: reviews, subset: v3}
""")
    r = m.ctl("apply", "-f", d, check=False)
    assert r.returncode == 1
    assert f"{d}/b.yaml:10: document 1: VirtualService default/ratings: spec.http[0].route[0].destination" in r.stderr, r.stderr
    assert "subset \"v3\"" in r.stderr, r.stderr
    assert m.routes() == []


def test_config_dir_names_a_refused_file_and_applies_the_others(procs, tmp_path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "reviews.yaml").write_text(SPLIT.replace("W1", "100").replace("W2", "0"))
    (cfg / "broken.yaml").write_text("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  hosts: [x]\n  hostz: [x]\n")
    m = Meshd(procs, extra=["--config-dir", str(cfg)])
    wait_until(lambda: ("VirtualService", "default/reviews") in m.routes(), what="the good file applied")
    log = m.proc.log_path.read_text()
    assert f"{cfg}/broken.yaml refused, its documents in force stay: {cfg}/broken.yaml:6: document 1: spec.hostz: unknown field" in log, log
    # Fixing the broken file applies it; breaking it again keeps what it had applied.
    (cfg / "broken.yaml").write_text(SECOND_VS.replace("reviews-too", "ratings").replace("[reviews]", "[ratings]").replace("host: reviews, subset: v1", "host: ratings"))
    wait_until(lambda: ("VirtualService", "default/ratings") in m.routes(), timeout=10, what="the fixed file applied")
    (cfg / "broken.yaml").write_text("kind: [\n")
    wait_until(lambda: m.proc.log_path.read_text().count("broken.yaml refused") == 2, timeout=10, what="refused again")
    assert ("VirtualService", "default/ratings") in m.routes()
    (cfg / "broken.yaml").unlink()
    wait_until(lambda: ("VirtualService", "default/ratings") not in m.routes(), timeout=10, what="removal")
    assert ("VirtualService", "default/reviews") in m.routes()


def test_oversized_input_gets_413_naming_the_limit_and_the_flag(procs, tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 120_000 + SPLIT.replace("W1", "100").replace("W2", "0"))   # ~1.3 MB
    m = Meshd(procs)
    r = m.ctl("apply", "-f", big, check=False)
    assert r.returncode == 1
    assert "meshd answered 413: request body of" in r.stderr and "over this server's limit of 1048576 bytes (meshd --max-apply-bytes)" in r.stderr, r.stderr
    assert m.routes() == []
    m.stop()
    m2 = Meshd(procs, name="meshd-big", extra=["--max-apply-bytes", "2Mi"])
    r = m2.ctl("apply", "-f", big)
    assert r.stdout.startswith("applied: version"), r.stdout
    bad = subprocess.run([str(MESHD), "--state-dir", tmp_path / "s", "--max-apply-bytes", "lots"], capture_output=True, text=True, timeout=10)
    assert bad.returncode == 2 and "--max-apply-bytes: expected a size" in bad.stderr


def test_control_bytes_from_input_are_escaped_in_answers_and_logs(procs, tmp_path):
    cfg = tmp_path / "config"
    cfg.mkdir()
    m = Meshd(procs, extra=["--config-dir", str(cfg)])
    f = tmp_path / "evil.yaml"
    f.write_bytes(b"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: \"a\\e[2Jb\\u009b31m\"}\n"
                  b"spec:\n  hosts: [reviews]\n  http: [{route: [{destination: {host: \"r\\e]0;owned\\u0007\"}}]}]\n")
    r = subprocess.run([str(MESHCTL), "--meshd", f"http://127.0.0.1:{m.admin}",
                        "--admin-token-file", str(m.state / "admin-token"), "apply", "-f", str(f)], capture_output=True, timeout=30)
    assert r.returncode == 1
    assert b"\x1b" not in r.stderr and b"\x07" not in r.stderr and b"\xc2\x9b" not in r.stderr, r.stderr
    assert b'metadata.name: expected a DNS-1123 name (lowercase letters, digits, \'-\', \'.\'), got "a\\x1b[2Jb\\u{9b}31m"' in r.stderr, r.stderr
    # The host, once the name is good.
    f.write_bytes(f.read_bytes().replace(b'name: "a\\e[2Jb\\u009b31m"', b"name: evil"))
    r = subprocess.run([str(MESHCTL), "--meshd", f"http://127.0.0.1:{m.admin}", "--admin-token-file", str(m.state / "admin-token"),
                        "apply", "-f", str(f)], capture_output=True, timeout=30)
    assert r.returncode == 1 and b"\x1b" not in r.stderr and b"\x07" not in r.stderr
    assert b'evil.yaml:6: document 1: spec.http[0].route[0].destination.host: expected a lowercase service host name' in r.stderr, r.stderr
    assert b'got "r\\x1b]0;owned\\x07"' in r.stderr, r.stderr
    # A valid document with control bytes in a label value: stored, shown escaped.
    f.write_bytes(SPLIT.replace("W1", "100").replace("W2", "0").replace("metadata: {name: reviews}", "metadata: {name: reviews, annotations: {note: \"x\\e[31my\"}}", 1).encode())
    m.ctl("apply", "-f", f)
    out = subprocess.run([str(MESHCTL), "--meshd", f"http://127.0.0.1:{m.admin}",
                          "--admin-token-file", str(m.state / "admin-token"), "get", "routes", "-o", "yaml"], capture_output=True, timeout=30).stdout
    assert b"\x1b" not in out and b"note: \"x\\e[31my\"" in out, out
    # meshd's log: a refused --config-dir file is logged with its error, escaped.
    (cfg / "evil.yaml").write_bytes(b"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: \"a\\e[2Jb\"}\n")
    wait_until(lambda: b"evil.yaml refused" in m.proc.log_path.read_bytes(), timeout=10, what="the refusal logged")
    log = m.proc.log_path.read_bytes()
    assert b"\x1b" not in log and b'got "a\\x1b[2Jb"' in log, log[-600:]


def test_get_routes_shows_hosts_matches_and_weights(procs, tmp_path):
    m = Meshd(procs)
    f = tmp_path / "routes.yaml"
    f.write_text(SPLIT.replace("W1", "90").replace("W2", "10").replace("  - name: canary\n", """  - name: api
    match:
    - uri: {prefix: /api}
      headers: {x-user: {exact: tester}}
    route:
    - destination: {host: reviews, subset: v2}
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: 5xx}
  - name: canary
"""))
    m.ctl("apply", "-f", f)
    out = m.ctl("get", "routes").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "NAMESPACE/NAME", "APPLIES", "TO"], out
    assert re.match(r"VirtualService +default/reviews +hosts: reviews$", lines[1]), out
    assert lines[2] == ("    http[0] api: match uri prefix /api and header x-user exact tester -> reviews:v2; "
                        "timeout 2s; retries 3 per try 500ms on 5xx"), out
    assert lines[3] == "    http[1] canary: match any -> reviews:v1 90%, reviews:v2 10%", out
    assert re.match(r"DestinationRule +default/reviews +host: reviews$", lines[4]), out
    assert lines[5:] == ["    subset v1: version=v1", "    subset v2: version=v2"], out
    y = m.ctl("get", "routes", "-o", "yaml").stdout
    assert "kind: VirtualService" in y and "prefix: /api" in y and "kind: DestinationRule" in y, y
    r = m.ctl("get", "routes", "-o", "json", check=False)
    assert r.returncode == 2 and "-o: expected yaml" in r.stderr


def start_meshd(state, admin=None):
    admin = admin or free_port()
    return subprocess.run([str(MESHD), "--state-dir", state, "--api-port", str(free_port()), "--admin-port", str(admin)],
                          capture_output=True, text=True, timeout=10)


def test_state_files_that_cannot_be_read_stop_meshd_naming_them(procs, tmp_path):
    m = Meshd(procs)
    f = tmp_path / "split.yaml"
    f.write_text(SPLIT.replace("W1", "100").replace("W2", "0"))
    m.ctl("apply", "-f", f)
    m.stop()
    applied = m.state / "applied.yaml"
    good = applied.read_text()
    assert good.startswith("# meshd: the config in force, documents: 2\n"), good
    # Loaded at start, with the counts in the log.
    m.start()
    assert "loaded 2 document(s) (1 DestinationRule, 1 VirtualService) and 0 workload(s)" in m.proc.log_path.read_text()
    m.stop()
    cases = [
        ("", "applied.yaml: the file is empty"),
        (good.replace("documents: 2", "documents: 3"), "applied.yaml: the header counts 3 document(s) but 2 were read"),
        (good.replace("weight: 100", "weight: [100"), "applied.yaml:12: YAML: "),
        (good.replace("subsets:", "subsetz:"), "applied.yaml:20: document 2: spec.subsetz: unknown field"),
        (good.replace("documents: 2", "documents: 3") + "---\n" + SECOND_VS, "applied.yaml: the stored config is refused:"),
    ]
    for text, want in cases:
        applied.write_text(text)
        r = start_meshd(m.state)
        assert r.returncode == 1 and f"{m.state}/{want}" in r.stderr, (text[:60], r.stderr)
    applied.write_bytes(b"# meshd: the config in force, documents: 0\n\xff\xfe")
    r = start_meshd(m.state)
    assert r.returncode == 1 and "applied.yaml: not UTF-8 text" in r.stderr, r.stderr
    applied.write_text(good)
    (m.state / "registry.txt").write_text("spiffe://cluster.local/ns/default/sa/reviews\treviews\tdefault\tapp=reviews\n")
    r = start_meshd(m.state)
    assert r.returncode == 1 and f"{m.state}/registry.txt:1: expected 5 tab-separated fields, got 4" in r.stderr, r.stderr
    (m.state / "registry.txt").write_text("spiffe://cluster.local/ns/default/sa/reviews\treviews\tdefault\tapp=reviews\tnot-an-address\n")
    r = start_meshd(m.state)
    assert r.returncode == 1 and "registry.txt:1: expected IP:PORT" in r.stderr, r.stderr
    (m.state / "registry.txt").unlink()
    # Restored: it starts with what was stored.
    m.start()
    assert m.routes() == [("VirtualService", "default/reviews"), ("DestinationRule", "default/reviews")]
