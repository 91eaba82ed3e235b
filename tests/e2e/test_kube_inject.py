"""meshctl kube-inject and kube-manifests (DESIGN §11) on the golden manifests in tests/kube:
exact output, validity against the real Kubernetes schemas (PyPI kubernetes-validate --strict,
1.29/1.31/1.33; native sidecars must fail on 1.27), idempotence, round trip, byte-for-byte
pass-through, refusals that write nothing, and the injected command lines parsed back by the
tools that run them."""
import pathlib
import shutil
import subprocess
import time

import pytest
import yaml

from conftest import MESHCTL, ROOT

KUBE = ROOT / "tests" / "kube"
INPUTS = sorted((KUBE / "in").glob("*.yaml"))
NAMES = [p.stem for p in INPUTS]
MODES = ["classic", "native"]
# Inputs in libyaml's own layout, so that uninject(inject(x)) is x byte for byte. mixed.yaml is
# hand-indented with comments inside a workload: that document comes back equal as data.
CANONICAL = [n for n in NAMES if n != "mixed"]
VERSIONS = ["1.29.0", "1.31.0", "1.33.0"]


def run(*args, stdin=None, check=True):
    r = subprocess.run([str(MESHCTL), *map(str, args)], input=stdin, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"meshctl {' '.join(map(str, args))}: rc {r.returncode}: {r.stderr}")
    return r


def inject(path, mode, *extra):
    return run("kube-inject", "-f", path, *(["--native-sidecar"] if mode == "native" else []), *extra).stdout


def golden(name, mode):
    return KUBE / "golden" / f"{name}.{mode}.yaml"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_output_is_the_golden_file(name, mode):
    assert inject(KUBE / "in" / f"{name}.yaml", mode) == golden(name, mode).read_text(), \
        f"kube-inject output changed for {name} ({mode}); if intended, run tests/kube/update-goldens.sh and review the diff"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_injecting_twice_changes_nothing(name, mode, tmp_path):
    once = golden(name, mode)
    assert inject(once, mode) == once.read_text()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_uninject_gives_back_the_input(name, mode):
    back = run("kube-inject", "--uninject", "-f", golden(name, mode)).stdout
    original = (KUBE / "in" / f"{name}.yaml").read_text()
    if name in CANONICAL:
        assert back == original
    else:
        assert list(yaml.safe_load_all(back)) == list(yaml.safe_load_all(original))


def test_documents_not_injected_pass_through_byte_for_byte():
    # optout.yaml: opted out by annotation and by label, a hostNetwork DaemonSet, a ConfigMap,
    # comments, flow style and a `...` end marker: nothing changes.
    src = (KUBE / "in" / "optout.yaml").read_text()
    for mode in MODES:
        assert inject(KUBE / "in" / "optout.yaml", mode) == src
    r = run("kube-inject", "-f", KUBE / "in" / "optout.yaml")
    assert "Deployment legacy: skipped (annotation sidecar.istio.io/inject: \"false\")" in r.stderr
    assert "Pod debug: skipped (label sidecar.mesh.io/inject: \"false\")" in r.stderr
    assert "DaemonSet exporter: skipped (hostNetwork: true" in r.stderr
    # mixed.yaml: the Service document (with its comments) and the trailing comment are kept as written.
    src = (KUBE / "in" / "mixed.yaml").read_text()
    out = inject(KUBE / "in" / "mixed.yaml", "classic")
    service = src.split("---\n")[1]
    assert "---\n" + service in out and "# the entry point" in out
    assert out.endswith("---\n# Trailing comment after the last document.\n")


def test_values_the_transform_does_not_touch_keep_their_form():
    out = golden("deployment", "classic").read_text()
    for kept in ['team: "0123"', 'value: "0123"', "value: !!str 2.10", "value: 'hello: world'",
                 "labels: &labels", "matchLabels: *labels", 'command: ["/bin/migrate", "--once"]',
                 "value: |\n            mode: strict\n            retries: 3\n"]:
        assert kept in out, kept
    data = list(yaml.safe_load_all(out))[0]
    env = {e["name"]: e["value"] for e in data["spec"]["template"]["spec"]["containers"][1]["env"]}
    assert env["ZIP"] == "0123" and env["RELEASE"] == "2.10" and env["GREETING"] == "hello: world"


def validate(files, version):
    return subprocess.run(["kubernetes-validate", "--strict", "--quiet", "-k", version, *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def expand_lists(files, tmp_path):
    """kubernetes-validate has no schema for kind List: its items are written out as documents."""
    out = []
    for f in files:
        docs = list(yaml.safe_load_all(f.read_text()))
        if any(d and d.get("kind") == "List" for d in docs):
            flat = [i for d in docs for i in (d["items"] if d and d.get("kind") == "List" else [d])]
            p = tmp_path / f.name
            p.write_text(yaml.safe_dump_all(flat, sort_keys=False))
            out.append(p)
        else:
            out.append(f)
    return out


needs_validate = pytest.mark.skipif(shutil.which("kubernetes-validate") is None,
                                    reason="kubernetes-validate (PyPI) is not installed; .ci/run installs it")


@needs_validate
@pytest.mark.parametrize("version", VERSIONS)
def test_every_output_validates_strictly(version, tmp_path):
    files = expand_lists([golden(n, m) for n in NAMES for m in MODES] + sorted((KUBE / "golden").glob("manifests.*.yaml")), tmp_path)
    r = validate(files, version)
    assert r.returncode == 0, r.stdout + r.stderr
    # It did check them (a List hidden from it would pass silently).
    assert "Couldn't find schema" not in r.stdout + r.stderr


@needs_validate
def test_native_sidecars_fail_on_kubernetes_1_27_and_classic_passes(tmp_path):
    for n in NAMES:
        if n == "optout":
            continue
        [f] = expand_lists([golden(n, "native")], tmp_path)
        r = validate([f], "1.27.0")
        assert r.returncode != 0 and "restartPolicy" in r.stdout + r.stderr, f"{n}: {r.stdout}{r.stderr}"
    r = validate(expand_lists([golden(n, "classic") for n in NAMES], tmp_path), "1.27.0")
    assert r.returncode == 0, r.stdout + r.stderr


def test_init_container_command_is_what_meshctl_capture_accepts():
    """The init container's args, run through meshctl itself (`capture print` takes the same
    flags as `apply` and needs no root): every golden's are accepted and give the rules."""
    seen = 0
    for n in NAMES:
        for m in MODES:
            for doc in yaml.safe_load_all(golden(n, m).read_text()):
                for obj in (doc.get("items", [doc]) if doc else []):
                    spec = pod_spec(obj)
                    for c in (spec or {}).get("initContainers", []):
                        if c["name"] != "mesh-init":
                            continue
                        assert c["command"] == ["/usr/bin/meshctl"] and c["args"][:2] == ["capture", "apply"]
                        r = run("capture", "print", *c["args"][2:])
                        assert "MESH_INBOUND" in r.stdout or "MESH_IN" in r.stdout, r.stdout
                        seen += 1
    assert seen >= 16


def pod_spec(obj):
    kind = obj.get("kind")
    if kind == "Pod":
        return obj["spec"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return obj["spec"]["template"]["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


@pytest.mark.parametrize("content, want", [
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: a, image: x}]}\n---\nkey: [unclosed\n",
     "document 2, line 7: not valid YAML (column 1): did not find expected ',' or ']'"),
    ("apiVersion: v1\nkind: ConfigMap\n---\n- a\n- list\n", "document 2, line 4: not a Kubernetes object"),
    ("apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  annotations:\n    traffic.sidecar.istio.io/excludeOutboundPorts: \"70000\"\n"
     "spec: {containers: [{name: a, image: x}]}\n", "document 1, line 6: annotation traffic.sidecar.istio.io/excludeOutboundPorts"),
])
def test_bad_input_is_an_error_and_nothing_is_written(tmp_path, content, want):
    src = tmp_path / "in.yaml"
    src.write_text(content)
    out = tmp_path / "out.yaml"
    r = run("kube-inject", "-f", src, "-o", out, check=False)
    assert r.returncode == 1
    assert want in r.stderr, r.stderr
    assert str(src) in r.stderr
    assert not out.exists()
    # stdin too: no partial output on stdout.
    r = run("kube-inject", "-f", "-", stdin=content, check=False)
    assert r.returncode == 1 and r.stdout == "" and want in r.stderr


def test_flags_are_checked():
    for args, want in [(["--meshd", "meshd:0"], "--meshd:"), (["--image", ""], "--image:"),
                       (["--uninject", "--native-sidecar"], "--uninject takes only -f and -o"),
                       (["--bogus"], "unknown flag --bogus")]:
        r = run("kube-inject", "-f", KUBE / "in" / "pod.yaml", *args, check=False)
        assert r.returncode == 2 and want in r.stderr, (args, r.stderr)


def test_meshd_flag_replaces_the_configmap_address():
    out = yaml.safe_load(run("kube-inject", "-f", KUBE / "in" / "pod.yaml", "--meshd", "10.0.0.7:15012,meshd-b.mesh:15012").stdout)
    proxy = out["spec"]["containers"][0]
    assert proxy["args"][:2] == ["--meshd", "10.0.0.7:15012,meshd-b.mesh:15012"]
    assert "MESHD_ADDRESS" not in [e["name"] for e in proxy["env"]]


def test_manifests_carry_the_root_certificate_and_the_store(tmp_path):
    root = (KUBE / "fixtures" / "root-cert.pem").read_text()
    docs = list(yaml.safe_load_all(golden("manifests", "etcd").with_name("manifests.etcd.yaml").read_text()))
    kinds = [d["kind"] for d in docs]
    assert kinds == ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service",
                     "PodDisruptionBudget", "ConfigMap", "ConfigMap"]
    maps = {d["metadata"]["namespace"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    assert set(maps) == {"shop", "default"}
    assert all(m["root-cert.pem"] == root and m["meshd"] == "meshd.mesh-system.svc:15012" for m in maps.values())
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 3
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--store") + 1] == "etcd://etcd-0.etcd:2379,etcd-1.etcd:2379,etcd-2.etcd:2379"
    file_docs = list(yaml.safe_load_all((KUBE / "golden" / "manifests.file.yaml").read_text()))
    assert "PersistentVolumeClaim" in [d["kind"] for d in file_docs]
    r = run("kube-manifests", "--root-cert", KUBE / "fixtures" / "root-cert.pem", "--replicas", "2", check=False)
    assert r.returncode == 2 and "--store etcd://" in r.stderr and r.stdout == ""
    key = tmp_path / "key.pem"
    # A real key, made now: a key given where the root certificate belongs is refused.
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key)],
                   check=True, capture_output=True)
    r = run("kube-manifests", "--root-cert", key, check=False)
    assert r.returncode == 2 and "no PEM certificate" in r.stderr


@pytest.mark.parametrize("name", ["deployment", "list", "cronjob"])
def test_injecting_again_with_other_options_replaces_the_injection(name):
    # classic -> native gives exactly the native golden; a new --image replaces the old one only.
    assert inject(golden(name, "classic"), "native") == golden(name, "native").read_text()
    assert inject(golden(name, "native"), "classic") == golden(name, "classic").read_text()
    out = inject(golden(name, "classic"), "classic", "--image", "registry.example/mesh:9")
    assert "registry.example/mesh:9" in out and "swift-mesh:0.18.0" not in out
    assert out.replace("registry.example/mesh:9", "swift-mesh:0.18.0") == golden(name, "classic").read_text()


def test_manifests_are_the_golden_files(tmp_path):
    # The same command lines as tests/kube/update-goldens.sh.
    root = KUBE / "fixtures" / "root-cert.pem"
    assert run("kube-manifests", "--root-cert", root).stdout == (KUBE / "golden" / "manifests.file.yaml").read_text()
    out = run("kube-manifests", "--root-cert", root, "--replicas", "3", "--store",
              "etcd://etcd-0.etcd:2379,etcd-1.etcd:2379,etcd-2.etcd:2379", "--app-namespace", "shop", "--app-namespace", "default").stdout
    assert out == (KUBE / "golden" / "manifests.etcd.yaml").read_text()


def test_a_500_workload_list_injects_and_comes_back(tmp_path):
    """A `kubectl get deploy -A -o yaml`-sized List (about 100,000 nodes, 180,000 injected):
    injected, injected again unchanged, and uninjected to the same data, each in seconds."""
    items = []
    for i in range(500):
        d = yaml.safe_load((KUBE / "in" / "deployment.yaml").read_text())
        d["metadata"]["name"] = f"svc{i}"
        d["spec"]["selector"]["matchLabels"] = {"app": f"svc{i}"}
        d["spec"]["template"]["metadata"]["labels"] = {"app": f"svc{i}", "version": "v1"}
        items.append(d)
    src = tmp_path / "list.yaml"
    src.write_text(yaml.dump({"apiVersion": "v1", "kind": "List", "items": items}, sort_keys=False,
                             Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
    out, again, back = tmp_path / "out.yaml", tmp_path / "again.yaml", tmp_path / "back.yaml"
    start = time.monotonic()
    r = run("kube-inject", "-f", src, "-o", out)
    assert r.stderr.count(": injected (classic)") == 500
    run("kube-inject", "-f", out, "-o", again)
    run("kube-inject", "--uninject", "-f", out, "-o", back)
    assert time.monotonic() - start < 60
    assert again.read_text() == out.read_text()
    fast = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    assert list(yaml.load_all(back.read_text(), Loader=fast)) == list(yaml.load_all(src.read_text(), Loader=fast))
