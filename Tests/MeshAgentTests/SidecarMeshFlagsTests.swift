import XCTest
import MeshAgent
import MeshConfig
import MeshCore

/// `SidecarMeshFlags.parse`: each bad form refused with one line naming the flag (no file is
/// read), then the command line `meshctl kube-inject` writes parsed whole, flag by flag.
final class SidecarMeshFlagsTests: XCTestCase {
    /// kube-inject's sidecar command line, the downward-API values expanded by the kubelet.
    let kube = ["--meshd", "meshd.mesh-system.svc:15012", "--root-cert", "/var/run/mesh/root-cert/root-cert.pem",
                "--token-file", "/var/run/secrets/mesh/token", "--service", "reviews", "--namespace", "bookinfo",
                "--service-account", "bookinfo-reviews", "--labels-file", "/var/run/mesh/podinfo/labels",
                "--advertise-address", "10.244.1.7", "--listen-address", "0.0.0.0", "--app-port", "9080", "--app-protocol", "http",
                "--capture", "--status-port", "15021", "--app-probe", "/app-health/reviews/readyz=9080/health",
                "--app-probe", "/app-health/reviews/livez=9080/live"]

    func refused(_ args: [String], _ prefix: String, _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try SidecarMeshFlags.parse(args)
            XCTFail("accepted \(args)", file: file, line: line)
        } catch {
            XCTAssertTrue(error.description.hasPrefix(prefix), error.description, file: file, line: line)
            XCTAssertTrue(fragment.isEmpty || error.description.contains(fragment), error.description, file: file, line: line)
            XCTAssertFalse(error.description.contains("\n"), file: file, line: line)
        }
    }

    /// kube's command line with `flag`'s value replaced (nil: the flag left out).
    func with(_ flag: String, _ value: String?) -> [String] {
        var a = kube
        let i = a.firstIndex(of: flag)!
        if let v = value { a[i + 1] = v } else { a.removeSubrange(i...(i + 1)) }
        return a
    }

    func testBadMeshd() {
        refused(with("--meshd", "meshd.mesh-system.svc"), "--meshd:", "expected HOST:PORT")
        refused(with("--meshd", "meshd_x.svc:15012"), "--meshd:", "neither an IP address nor a DNS name")
        refused(with("--meshd", "meshd.svc:15012,"), "--meshd:", "expected HOST:PORT")
        refused(with("--meshd", "meshd.svc:15012,10.0.0.1:0"), "--meshd:", "from 1 to 65535")
        refused(with("--meshd", "meshd.svc:15012,meshd.svc:15012"), "--meshd:", "meshd.svc:15012 is given twice")
        refused(with("--meshd", "10.0.0.1:15012,10.0.0.1:15012"), "--meshd:", "10.0.0.1:15012 is given twice")
        refused(with("--meshd", nil), "--meshd:", "expected meshd's API address")
    }

    func testBadTokenAndFiles() {
        refused(kube + ["--token", "abc"], "give --token or --token-file, not both", "")
        refused(with("--token-file", nil), "mesh mode needs a join token", "--token-file")
        refused(with("--token-file", nil) + ["--token", "a b"], "--token:", "space or control character")
        refused(with("--token-file", nil) + ["--token", ""], "mesh mode needs a join token", "")
        refused(with("--token-file", ""), "--token-file:", "file name")
        refused(with("--labels-file", ""), "--labels-file:", "file name")
        refused(with("--root-cert", nil), "mesh mode needs --root-cert", "")
        refused(kube + ["--config", "x.yaml"], "--config (static mode) and --meshd (mesh mode) exclude each other", "")
        refused(kube + ["extra"], "unexpected argument \"extra\"", "")
        refused(kube + ["--unknown"], "unknown flag --unknown", "")
    }

    func testBadStatusPortAndProbes() {
        refused(with("--status-port", "65536"), "--status-port:", "from 0 to 65535")
        refused(with("--status-port", "x"), "--status-port:", "from 0 to 65535")
        refused(with("--status-port", "9080"), "--status-port:", "is also --app-port")
        refused(with("--status-port", "15001"), "--status-port:", "is also --outbound-port")
        refused(with("--status-port", "15000"), "--status-port:", "is also --admin-port")
        refused(with("--status-port", "15006"), "--status-port:", "is also --inbound-port")
        refused(with("--status-port", "15053"), "--status-port:", "is also --dns-port")
        refused(with("--status-port", nil), "--app-probe:", "give --status-port P")
        refused(with("--status-port", "0"), "--app-probe:", "give --status-port P")
        let bad: [(String, String)] = [
            ("/app-health/reviews/readyz", "no '='"),
            ("/healthz=9080", "/app-health/CONTAINER/readyz, livez or startupz"),
            ("app-health/reviews/readyz=9080", "/app-health/CONTAINER"),
            ("/app-health/reviews/readyz/x=9080", "/app-health/CONTAINER"),
            ("/app-health//readyz=9080", "\"\" is not a container name"),
            ("/app-health/Reviews/readyz=9080", "\"Reviews\" is not a container name"),
            ("/app-health/-r/readyz=9080", "is not a container name"),
            ("/app-health/" + String(repeating: "r", count: 64) + "/readyz=9080", "is not a container name"),
            ("/app-health/reviews/healthz=9080", "readyz, livez or startupz, not \"healthz\""),
            ("/app-health/reviews/readyz=", "from 1 to 65535, got \"\""),
            ("/app-health/reviews/readyz=0", "from 1 to 65535"),
            ("/app-health/reviews/readyz=65536", "from 1 to 65535"),
            ("/app-health/reviews/readyz=-1", "from 1 to 65535"),
            ("/app-health/reviews/readyz=http", "from 1 to 65535"),
            ("/app-health/reviews/readyz=9080health", "from 1 to 65535"),
            ("/app-health/reviews/readyz=9080/a b", "visible ASCII"),
            ("/app-health/reviews/readyz=9080/a\r\nx: y", "visible ASCII"),
            ("/app-health/reviews/readyz=9080/a#frag", "visible ASCII"),
            ("/app-health/reviews/readyz=9080/caf\u{e9}", "visible ASCII"),
            ("/app-health/reviews/readyz=9080/" + String(repeating: "a", count: 2048), "longer than 2048"),
            ("/app-health/reviews/readyz=8080/other", "/app-health/reviews/readyz is given twice"),
        ]
        for (probe, fragment) in bad {
            var a = kube
            a[a.lastIndex(of: "--app-probe")! + 1] = probe
            refused(a, "--app-probe:", fragment)
        }
    }

    func testOtherFlagsRefusedByName() {
        refused(with("--advertise-address", "$(INSTANCE_IP)"), "config: --advertise-address:", "expected an IP address")
        refused(with("--advertise-address", nil), "config: --listen-address:", "needs an explicit --advertise-address")
        refused(with("--listen-address", "10.244.1.8"), "config: --listen-address:", "differs from --advertise-address")
        refused(with("--namespace", "Bookinfo"), "config: --namespace:", "expected a DNS label")
        refused(with("--service", "reviews_v1"), "config: --service:", "expected a DNS label")
        refused(with("--service-account", "$(SERVICE_ACCOUNT)"), "config: --service-account:", "expected a DNS label")
        refused(with("--app-protocol", "h3"), "config: --app-protocol:", "expected http, http2, grpc or tcp")
        refused(with("--app-port", "0"), "--app-port:", "from 1 to 65535")
        refused(kube + ["--label", "version"], "--label:", "expected k=v")
        refused(kube + ["--label", "v=1", "--label", "v=2"], "--label:", "v is given twice")
        refused(kube + ["--label", "v=a b"], "config: --label:", "expected key=value")
        refused(kube + ["--log-level", "loud"], "--log-level:", "expected debug, info, warn or error")
        refused(kube + ["--concurrency", "0"], "--concurrency:", "from 1 to 256")
        refused(kube + ["--route", "reviews"], "config: --route:", "expected HOST=IP:PORT")
        refused(kube + ["--resolv-conf", "/etc/r", "--dns-port", "0"], "--resolv-conf:", "the DNS port is off")
    }

    func testKubeInjectsCommandLineParsesWhole() throws {
        let f = try SidecarMeshFlags.parse(kube)
        XCTAssertEqual(f.meshd, [.name("meshd.mesh-system.svc", port: 15012)])
        XCTAssertEqual(f.meshdText, "meshd.mesh-system.svc:15012")
        XCTAssertEqual(f.rootCert, "/var/run/mesh/root-cert/root-cert.pem")
        XCTAssertEqual(f.token, .file("/var/run/secrets/mesh/token"))
        XCTAssertEqual(f.options.service, "reviews")
        XCTAssertEqual(f.options.namespace, "bookinfo")
        XCTAssertEqual(f.options.serviceAccount, "bookinfo-reviews")
        XCTAssertEqual(f.identity, "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews")
        XCTAssertEqual(f.labelsFile, "/var/run/mesh/podinfo/labels")
        XCTAssertEqual(f.advertise, "10.244.1.7")
        XCTAssertEqual(f.options.listenAddress, "0.0.0.0")
        XCTAssertEqual(f.options.appPort, 9080)
        XCTAssertEqual(f.options.appProtocol, "http")
        XCTAssertTrue(f.options.capture)
        XCTAssertEqual(f.dnsPort, 15053)   // on by default under capture
        XCTAssertEqual(f.statusPort, 15021)
        XCTAssertEqual(f.appProbes, [AppProbe(path: "/app-health/reviews/readyz", port: 9080, target: "/health"),
                                     AppProbe(path: "/app-health/reviews/livez", port: 9080, target: "/live")])
        XCTAssertEqual([f.options.inboundPort, f.options.outboundPort, f.options.adminPort], [15006, 15001, 15000])
        XCTAssertFalse(f.check)
        XCTAssertNil(f.logLevel)
        XCTAssertTrue(f.options.labels.isEmpty)
        let b = try f.bootstrap(nil)
        XCTAssertEqual(b.inbound?.address.text, "0.0.0.0:15006")
        XCTAssertEqual(b.workload.labels.map { "\($0.0)=\($0.1)" }, ["app=reviews"])
        // Every flag the parser takes is in `specs`, and `--check`, several addresses and a
        // probe without a path parse too.
        let g = try SidecarMeshFlags.parse(with("--meshd", "[fd00::1]:15012,meshd-0.meshd:15012,10.0.0.1:15012") + ["--check",
            "--app-probe", "/app-health/web/startupz=8080", "--label", "version=v2", "--log-level", "debug"])
        XCTAssertEqual(g.meshd.map(\.description), ["[fd00::1]:15012", "meshd-0.meshd:15012", "10.0.0.1:15012"])
        XCTAssertTrue(g.check)
        XCTAssertEqual(g.logLevel, .debug)
        XCTAssertEqual(g.appProbes.last, AppProbe(path: "/app-health/web/startupz", port: 8080, target: "/"))
        XCTAssertEqual(g.options.labels.map { "\($0.0)=\($0.1)" }, ["version=v2"])
        let q = try SidecarMeshFlags.parse(with("--app-probe", "/app-health/reviews/readyz=9080/live?full=1&x=%20"))
        XCTAssertEqual(q.appProbes.first?.target, "/live?full=1&x=%20")
    }

    func testLoadFilesMergesLabelsWithFlagsWinning() throws {
        let dir = "/tmp/mesh-agent-test-\(getpid())"
        mkdir(dir, 0o700)
        defer { for f in ["root.pem", "labels", "token"] { unlink("\(dir)/\(f)") }; rmdir(dir) }
        func write(_ name: String, _ text: String) { let fp = fopen("\(dir)/\(name)", "w")!; fputs(text, fp); fclose(fp) }
        write("root.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        write("labels", "app=\"reviews\"\nversion=\"v1\"\nteam=\"blue\"")
        write("token", "tok-123 \n\n")
        var f = try SidecarMeshFlags.parse(with("--root-cert", "\(dir)/root.pem").map { $0 == "/var/run/mesh/podinfo/labels" ? "\(dir)/labels" : $0 }
                                           .map { $0 == "/var/run/secrets/mesh/token" ? "\(dir)/token" : $0 } + ["--label", "version=v2"])
        let loaded = try f.loadFiles(withToken: true)
        XCTAssertEqual(loaded.token, "tok-123")
        XCTAssertTrue(loaded.rootPEM.hasPrefix("-----BEGIN CERTIFICATE-----"))
        XCTAssertEqual(f.options.labels.map { "\($0.0)=\($0.1)" }, ["app=reviews", "team=blue", "version=v2"])
        write("labels", "app=\"reviews\"\nversion=v1")
        var g = try SidecarMeshFlags.parse(with("--root-cert", "\(dir)/root.pem").map { $0 == "/var/run/mesh/podinfo/labels" ? "\(dir)/labels" : $0 })
        XCTAssertThrowsError(try g.loadFiles(withToken: false)) { e in
            XCTAssertTrue("\(e)".hasPrefix("--labels-file \(dir)/labels:2: "), "\(e)")
        }
    }

    func testTokenFileIsReadEachTime() throws {
        let path = "/tmp/mesh-agent-token-\(getpid())"
        defer { unlink(path) }
        let t = JoinToken.file(path)
        XCTAssertThrowsError(try t.current()) { XCTAssertEqual("\($0)", "--token-file \(path): cannot read it (No such file or directory)") }
        func write(_ text: String) { let fp = fopen(path, "w")!; fputs(text, fp); fclose(fp) }
        write(" \n")
        XCTAssertThrowsError(try t.current()) { XCTAssertEqual("\($0)", "--token-file \(path): the file is empty") }
        write("first\n")
        XCTAssertEqual(try t.current(), "first")
        write("second\r\n\t ")
        XCTAssertEqual(try t.current(), "second")
        write("a\nb")
        XCTAssertThrowsError(try t.current()) { XCTAssertTrue("\($0)".hasSuffix("space or control character"), "\($0)") }
        XCTAssertEqual(try JoinToken.literal("lit").current(), "lit")
    }
}
