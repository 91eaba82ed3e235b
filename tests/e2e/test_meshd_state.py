"""meshd's state directory cannot be lost or silently replaced: one meshd per directory (a second
exits naming the holder's pid), and a token-key, admin-token or CA file that is cut short or
damaged stops meshd with one line naming the file, instead of being used as something else."""

import shutil
import subprocess

from conftest import MESHD, Meshd, free_port, http_get
from test_meshd import ask, openssl_csr

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-callers}
spec:
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}]
"""

DENY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
"""


def refused_start(state, *extra):
    """Runs meshd on `state` expecting it to stop at once; returns its last stderr line. A meshd
    that starts instead is killed by the timeout (and the test fails)."""
    r = subprocess.run([str(MESHD), "--state-dir", str(state), "--api-port", str(free_port()), "--admin-port", str(free_port()),
                        *extra], capture_output=True, text=True, timeout=15)
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("meshd: error: "), r.stderr
    return lines[-1][len("meshd: error: "):]


def test_a_second_meshd_on_the_same_state_dir_exits_naming_the_holder(procs, tmp_path):
    a = Meshd(procs)
    f = tmp_path / "policy.yaml"
    f.write_text(POLICY)
    a.ctl("apply", "-f", f)
    before = (a.state / "applied.yaml").read_text()
    assert "reviews-callers" in before

    r = subprocess.run([str(MESHD), "--state-dir", str(a.state), "--api-port", str(free_port()), "--admin-port", str(free_port())],
                       capture_output=True, text=True, timeout=15)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"meshd: error: state directory {a.state} is in use by another meshd (pid {a.proc.pid}, holding {a.state}/meshd.lock); "
        "stop it or give this one another --state-dir"]

    # A still serves, with its applied config intact, and keeps applying.
    assert a.proc.poll() is None
    assert http_get(f"http://127.0.0.1:{a.admin}/ready")[0] == 200
    assert (a.state / "applied.yaml").read_text() == before
    f.write_text(DENY)
    a.ctl("apply", "-f", f)
    routes = a.routes()
    assert routes == [("AuthorizationPolicy", "default/reviews-callers"), ("AuthorizationPolicy", "default/no-admin")], routes

    # Once A is gone, the directory is free again (the lock dies with its holder).
    a.stop()
    a.start()
    assert ("AuthorizationPolicy", "default/no-admin") in a.routes()
    assert (a.state / "meshd.lock").read_text() == f"{a.proc.pid}\n"


def test_a_token_key_cut_short_is_refused_and_tokens_survive_its_restore(procs, tmp_path):
    m = Meshd(procs)
    token = m.token("cart", ns="shop")
    m.stop()
    key_file = m.state / "token-key"
    key = key_file.read_text()
    key_file.write_text(key[:40])
    assert refused_start(m.state) == (
        f"{key_file} holds 40 hex digits (cut short); expected 64 hex digits (a 32-byte secret) and a newline, "
        "as meshd writes it: restore the file, or remove it to create a new one")
    assert key_file.read_text() == key[:40], "a refused key file is never rewritten"
    key_file.write_text("")
    assert refused_start(m.state).startswith(f"{key_file} is empty; expected 64 hex digits")

    admin = m.state / "admin-token"
    good_admin = admin.read_text()
    key_file.write_text(key)
    admin.write_text("\n")
    assert refused_start(m.state).startswith(f"{admin} is empty; expected 48 hex digits (a 24-byte secret)")
    admin.write_text(good_admin)

    # Restored: the token minted before still joins.
    m.start()
    _, csr = openssl_csr(tmp_path, "cart", "spiffe://cluster.local/ns/shop/sa/cart")
    code, body = ask(m, csr, token)
    assert code == 200, body


def test_corrupt_ca_files_in_the_state_dir_are_named(procs):
    m = Meshd(procs)
    m.stop()
    key_file, root_file = m.state / "ca-key.pem", m.state / "root-cert.pem"
    key, root = key_file.read_text(), root_file.read_text()

    key_file.write_text(key[:100])
    assert refused_start(m.state).startswith(f"{key_file}: not a PEM private key")
    key_file.write_text(key)

    root_file.write_text("garbage\n")
    assert refused_start(m.state) == f"{root_file}: no PEM certificate found"
    root_file.write_text(root[:300])
    assert refused_start(m.state).startswith(f"{root_file}: PEM certificate 1 is malformed or cut short (")
    root_file.write_text(root)

    m.start()
    assert m.root.read_text() == root


def test_plug_in_ca_with_a_bad_cert_chain_is_named(procs, pki, tmp_path):
    ca = tmp_path / "ca"
    ca.mkdir()
    for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"):
        shutil.copy(pki / name, ca / name)
    state = tmp_path / "state"
    chain_file = ca / "cert-chain.pem"
    chain = chain_file.read_text()

    chain_file.write_text("garbage\n")
    assert refused_start(state, "--ca-dir", ca) == f"{chain_file}: no PEM certificate found"
    # The intermediate whole, the root cut short: refused, not read as a chain without its root.
    end = chain.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----\n")
    chain_file.write_text(chain[:end + 200])
    assert refused_start(state, "--ca-dir", ca).startswith(f"{chain_file}: PEM certificate 2 is malformed or cut short (")
    # A root-cert.pem that is not the root cert-chain.pem leads to.
    (ca / "root-cert.pem").write_text((pki / "foreign" / "root-cert.pem").read_text())
    chain_file.write_text(chain)
    assert refused_start(state, "--ca-dir", ca) == (
        f"{ca}/ca-cert.pem does not verify up to a root in {ca}/root-cert.pem through {chain_file}: "
        "self-signed certificate in certificate chain")
    shutil.copy(pki / "root-cert.pem", ca / "root-cert.pem")
    (ca / "ca-key.pem").write_text((pki / "ca-key.pem").read_text()[:90])
    assert refused_start(state, "--ca-dir", ca).startswith(f"{ca}/ca-key.pem: not a PEM private key")

    # Whole again: meshd starts with it.
    shutil.copy(pki / "ca-key.pem", ca / "ca-key.pem")
    m = Meshd(procs, state=state, extra=["--ca-dir", str(ca)])
    assert m.root.read_text() == (pki / "root-cert.pem").read_text()
