"""An injected pod, simulated one level below Kubernetes (issue 18, docs/kubernetes.md): the
containers kube-inject wrote into the golden files run with exactly their command lines, in
network namespaces standing in for pods, and the kubelet's part is played by the test.

Hosts (tests/e2e/netns.py): M runs meshd and plays the node (the kubelet probes from there);
P is the pod of tests/kube/golden/deployment.classic.yaml (reviews-v2, namespace shop); Q the pod
of tests/kube/golden/pod.classic.yaml (ratings, the caller). For each pod the test does what the
kubelet would: expands `$(VAR)` from the container's env (the downward API and the mesh-sidecar
ConfigMap's values), runs the init container's command as root, mounts the volumes at the
paths the containers name (a private mount namespace with a tmpfs on /run: the ConfigMap's root
certificate, the token, the downward-API labels file), starts the sidecar as its securityContext
says (uid/gid 1337), runs the postStart hook, then the app, and probes as the pod spec says.

The token file holds a meshd join token here (a real kubelet projects a service-account token,
which meshd reviews with TokenReview: tests/e2e/test_kube_token_review.py covers that path)."""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
import yaml

from conftest import MESHCTL, MESHD, ROOT, SIDECAR, wait_until
from netns import Hosts

M, P, Q = range(3)
API = 15012
GOLDEN = ROOT / "tests" / "kube" / "golden"
PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy")

# The app: 200 for every path (its probes' too) until /_fail is asked, then 500.
APP = textwrap.dedent("""
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    failing = False
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a): pass
        def do_GET(self):
            global failing
            if self.path == "/_fail": failing = True
            code = 500 if failing and self.path != "/_fail" else 200
            xfcc = self.headers.get("x-forwarded-client-cert", "")
            body = f"{sys.argv[2]} {self.path} xfcc={xfcc}\\n".encode()
            self.send_response(code)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
""")


def workload(name):
    """The pod spec and template metadata of the first document of a classic golden."""
    doc = next(yaml.safe_load_all((GOLDEN / f"{name}.classic.yaml").read_text()))
    t = doc if doc["kind"] == "Pod" else doc["spec"]["template"]
    return t["metadata"], t["spec"]


def container(spec, name, list_name="containers"):
    return next(c for c in spec.get(list_name, []) if c["name"] == name)


class Pod:
    """One injected pod in host `i`, brought up as the kubelet would."""

    def __init__(self, mesh, i, golden, namespace, service_account):
        self.mesh, self.h, self.i = mesh, mesh.h, i
        self.meta, self.spec = workload(golden)
        self.init = container(self.spec, "mesh-init", "initContainers")
        self.proxy = container(self.spec, "mesh-proxy")
        # The kubelet's values for the env the sidecar's args refer to.
        self.env = {"MESHD_ADDRESS": f"{self.h.addr4(M)}:{API}", "POD_NAMESPACE": namespace,
                    "SERVICE_ACCOUNT": service_account, "INSTANCE_IP": self.h.addr4(i)}
        declared = {e["name"] for e in self.proxy["env"]}
        assert set(self.env) == declared, f"the sidecar's env is {declared}"
        self.volumes = tempfile.mkdtemp(prefix="kube-pod-")
        os.chmod(self.volumes, 0o755)
        # The modes the kubelet gives: ConfigMap and downward-API files 0644, the projected
        # token 0644 (the pod's containers run as different users); directories 0755.
        self.token = mesh.ctl("token", "create", "--namespace", namespace, "--service-account", service_account).stdout.strip()
        assert self.token.startswith("mesh1."), "no join token"
        labels = self.meta["labels"] | {"pod-template-hash": "7d9f6c"}
        # The downward API's labels file: key="value" per line, Go-quoted.
        self.files = {"config/root-cert.pem": mesh.root_pem, "secrets/mesh/token": self.token,
                      "podinfo/labels": "".join(f'{k}="{v}"\n' for k, v in sorted(labels.items()))}
        for rel, text in self.files.items():
            path = os.path.join(self.volumes, rel)
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o644)

    def expand(self, args):
        out = []
        for a in args:
            for k, v in self.env.items():
                a = a.replace(f"$({k})", v)
            assert "$(" not in a, a
            out.append(a)
        return out

    @staticmethod
    def binary(path):
        return {"/usr/bin/meshctl": str(MESHCTL), "/usr/bin/sidecar": SIDECAR_COPY[0]}[path]

    def run_init(self):
        argv = [self.binary(self.init["command"][0]), *self.init["args"]]
        return self.h.run(self.i, argv)

    def start_sidecar(self):
        sc = self.proxy["securityContext"]
        # The volumes at the paths the container mounts them (/var/run is /run on Debian).
        mounts = {m["name"]: m["mountPath"] for m in self.proxy["volumeMounts"]}
        assert mounts == {"mesh-token": "/var/run/secrets/mesh", "mesh-sidecar": "/var/run/mesh/config",
                          "mesh-podinfo": "/var/run/mesh/podinfo"}
        script = ("mount -t tmpfs tmpfs /run && mkdir -p /run/secrets /run/mesh && "
                  f"cp -r {self.volumes}/secrets/mesh /run/secrets/mesh && cp -r {self.volumes}/config /run/mesh/config && "
                  f"cp -r {self.volumes}/podinfo /run/mesh/podinfo && "
                  f'exec setpriv --reuid={sc["runAsUser"]} --regid={sc["runAsGroup"]} --clear-groups "$@"')
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                self.binary(self.proxy["command"][0]), *self.expand(self.proxy["args"])]
        self.sidecar = self.h.popen(self.i, argv, f"sidecar-{self.i}")
        return self.sidecar

    def post_start(self, timeout):
        hook = self.proxy["lifecycle"]["postStart"]["exec"]["command"]
        argv = [self.binary(hook[0]), *[timeout if a == "120s" else a for a in hook[1:]]]
        return self.h.run(self.i, argv, timeout=150)

    def start_app(self, name, port):
        self.app = self.h.popen(self.i, [sys.executable, "-c", APP, str(port), name], f"app-{name}")

    def probe(self, path, port):
        """An HTTP probe from the node (host M) to this pod's IP, as the kubelet sends it."""
        r = self.h.run(M, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                           f"http://{self.h.addr4(self.i)}:{port}{path}"])
        return r.stdout

    def close(self):
        self.h.run(self.i, [str(MESHCTL), "capture", "remove"])
        shutil.rmtree(self.volumes, ignore_errors=True)


SIDECAR_COPY = [None]


class KubeMesh:
    def __init__(self, h, tmp):
        self.h, self.tmp = h, tmp
        for i in range(h.n):
            h.run(i, ["ip", "route", "add", "default", "dev", "eth0"], check=True)
        share = tempfile.mkdtemp(prefix="kube-share-")
        os.chmod(share, 0o755)
        self.share = share
        SIDECAR_COPY[0] = os.path.join(share, "sidecar")
        shutil.copy2(SIDECAR, SIDECAR_COPY[0])
        os.chmod(SIDECAR_COPY[0], 0o755)
        self.state = tmp / "meshd-state"
        self.meshd = h.popen(M, [MESHD, "--state-dir", self.state, "--api-port", API, "--listen-address", h.addr4(M)], "meshd")
        wait_until(lambda: self.meshd.poll() is None and self.ctl("status").returncode == 0, timeout=20, what="meshd ready")
        self.root_pem = (self.state / "root-cert.pem").read_text()
        self.pods = []

    def ctl(self, *args):
        return self.h.run(M, [MESHCTL, "--meshd", "http://127.0.0.1:15014", "--admin-token-file", self.state / "admin-token", *args])

    def close(self):
        for p in self.pods:
            p.close()
        shutil.rmtree(self.share, ignore_errors=True)


@pytest.fixture(scope="module")
def km(tmp_path_factory):
    why = Hosts.unavailable()
    if why:
        pytest.skip(why)
    if shutil.which("iptables") is None or shutil.which("unshare") is None:
        pytest.skip("needs iptables and unshare (installed by .ci/run)")
    tmp = tmp_path_factory.mktemp("kubepod")
    with Hosts(3, tmp) as h:
        mesh = None
        try:
            mesh = KubeMesh(h, tmp)
            yield mesh
        finally:
            if mesh:
                mesh.close()


def app_run(km, i, args):
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    return subprocess.run(km.h.argv(i, args), capture_output=True, text=True, timeout=30, env=env)


def test_injected_pods_start_probe_and_call_through_the_mesh(km):
    reviews = Pod(km, P, "deployment", "shop", "reviews")
    ratings = Pod(km, Q, "pod", "shop", "ratings")
    km.pods += [reviews, ratings]

    # Init containers: the capture rules, from the golden's exact arguments.
    for pod in (reviews, ratings):
        r = pod.run_init()
        assert r.returncode == 0, r.stderr
    # The postStart hook holds the app until the sidecar is ready: with no sidecar it times out.
    r = reviews.post_start("1s")
    assert r.returncode == 1 and "not ready" in r.stderr

    for pod in (reviews, ratings):
        pod.start_sidecar()
    for pod in (reviews, ratings):
        r = pod.post_start("60s")
        assert r.returncode == 0, f"{r.stderr} (sidecar log {pod.sidecar.log_path})"
    # Only now do the apps start (the kubelet starts the next container after postStart).
    reviews.start_app("reviews", 9080)
    ratings.start_app("ratings", 9080)

    # The sidecar's own probes, as the pod spec says, from the node.
    for pod in (reviews, ratings):
        for probe in ("readinessProbe", "startupProbe"):
            g = pod.proxy[probe]["httpGet"]
            assert pod.probe(g["path"], g["port"]) == "200"
    # The app's startup probe, rewritten to the status port, reaches the app on 127.0.0.1.
    app = container(reviews.spec, "reviews")
    g = app["startupProbe"]["httpGet"]
    assert (g["path"], g["port"]) == ("/app-health/reviews/startupz", 15021)
    wait_until(lambda: reviews.probe(g["path"], g["port"]) == "200", timeout=10, what="the app's startup probe passing")
    for probe in ("readinessProbe", "livenessProbe"):
        g = container(ratings.spec, "ratings")[probe]["httpGet"]
        assert g["port"] == 15021
        wait_until(lambda: ratings.probe(g["path"], g["port"]) == "200", timeout=10, what=f"ratings {probe}")

    # The kubelet's plaintext to the app's own port never reaches it (STRICT mTLS under capture).
    r = km.h.run(M, ["curl", "-s", "--max-time", "3", f"http://{km.h.addr4(P)}:9080/health"])
    assert "reviews /health" not in r.stdout

    # The caller's plain call by name goes through both sidecars over mutual TLS.
    def call():
        r = app_run(km, Q, ["curl", "-sS", "--max-time", "5", "http://reviews.shop.svc.cluster.local:9080/hello"])
        return r.stdout if r.returncode == 0 and r.stdout.startswith("reviews /hello") else None
    body = wait_until(call, timeout=20, what="ratings -> reviews through the mesh")
    assert "URI=spiffe://cluster.local/ns/shop/sa/ratings" in body

    # The labels file (downward API) reached meshd's registry; Prometheus scrapes the status port.
    services = km.ctl("get", "services").stdout
    line = next(l for l in services.splitlines() if l.startswith("reviews.shop"))
    assert "version=v2" in line and "pod-template-hash=7d9f6c" in line, line
    metrics = reviews.probe("/stats/prometheus", reviews.meta["annotations"]["prometheus.io/port"])
    assert metrics == "200"

    # A failing app fails its rewritten probe; the sidecar's readiness is its own.
    assert app_run(km, P, ["curl", "-s", "http://127.0.0.1:9080/_fail"]).returncode == 0
    g = app["startupProbe"]["httpGet"]
    assert reviews.probe(g["path"], g["port"]) == "500"
    assert reviews.probe("/ready", 15021) == "200"
