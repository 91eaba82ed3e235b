// push-load: simulated sidecars for meshd on MeshIO event loops (bench/push.sh). No thread per
// stream and no Foundation: a few loop threads hold thousands of keep-alive mTLS config streams,
// speaking the config stream with MeshControlWire's own message types. See `usage` (Options.swift).
import MeshAgent
import MeshControlWire
import MeshCore
import MeshIO
import MeshPKI
import MeshTLS
#if canImport(Glibc)
import Glibc
#endif

signal(SIGPIPE, SIG_IGN)
let opts = Options(Array(CommandLine.arguments.dropFirst()))
let openFiles = Threads.raiseOpenFilesLimit()
if opts.streams + opts.csrClients + 64 > openFiles {
    fail("the open-files limit is \(openFiles), under the \(opts.streams + opts.csrClients) connections asked for (raise ulimit -n)")
}
let runStart = Clock.monotonicNanos()
var summary = Summary()
summary.put("streams", opts.streams)
summary.put("namespaces", opts.namespaces)
summary.put("threads", opts.threads)
summary.put("api_addresses", opts.api.count)
summary.put("source_addresses", opts.sources.count)

// MARK: credentials

let admin = opts.admin
@MainActor func adminCall(_ i: Int, _ method: String, _ path: String, body: String = "", contentType: String? = nil) -> (status: Int, body: String) {
    var headers = [("authorization", "Bearer \(opts.adminToken)")]
    if let t = contentType { headers.append(("content-type", t)) }
    do { return try admin[i % admin.count].request(method: method, path: path, headers: headers, body: body, timeoutSeconds: 60) } catch {
        fail("admin \(admin[i % admin.count].address): \(error)", code: 1)
    }
}

func namespaceName(_ i: Int) -> String { "load-\(i)" }

/// A join token for `namespace`/`sa`, minted on the first admin address.
@MainActor func mintToken(namespace: String, serviceAccount: String) -> String {
    let r = adminCall(0, "POST", "/v1/tokens?namespace=\(namespace)&serviceAccount=\(serviceAccount)&ttl=2h")
    guard r.status == 200 else { fail("minting a join token for \(namespace)/\(serviceAccount): meshd answered \(r.status): \(r.body.trimmingCharacters)", code: 1) }
    return r.body.trimmingCharacters
}

/// The client TLS context of a workload certificate obtained the way a sidecar does (MeshAgent).
@MainActor func clientContext(_ c: WorkloadIdentity.Credentials) -> TLSContext {
    var o = TLSContext.Options(certChainFile: "(push-load)", privateKeyFile: "(push-load)", trustBundleFile: "--root-cert")
    o.alpn = ["http/1.1"]
    o.certChainPEM = c.chainPEM
    o.privateKeyPEM = c.keyPEM
    o.trustBundlePEM = c.bundlePEM + (c.bundlePEM.contains(opts.rootPEM) ? "" : opts.rootPEM)
    o.trustDomain = opts.trustDomain
    do { return try TLSContext(role: .client, options: o) } catch { fail("client TLS context: \(error)", code: 1) }
}

let meshdIdentity = "spiffe://\(opts.trustDomain)/ns/mesh-system/sa/meshd"

// MARK: streams

var workers: [Worker] = []
var failedRun = false

@MainActor func sumAll(_ f: (Worker) -> Int) -> Int { workers.reduce(0) { $0 + f($1) } }
@MainActor func watched() -> [ProcSample] { opts.watchPids.compactMap { ProcSample.read($0) } }
func selfSample() -> [ProcSample] { ProcSample.read("self").map { [$0] } ?? [] }
func seconds(_ nanos: UInt64) -> Double { Double(nanos) / 1e9 }

if opts.streams > 0 {
    var contexts: [TLSContext] = []
    let t0 = Clock.monotonicNanos()
    for ns in 0..<opts.namespaces {
        let name = namespaceName(ns)
        let token = mintToken(namespace: name, serviceAccount: "sim")
        let id = WorkloadIdentity(meshd: [opts.api[ns % opts.api.count]], identity: "spiffe://\(opts.trustDomain)/ns/\(name)/sa/sim",
                                  rootPEM: opts.rootPEM, token: token)
        do { contexts.append(clientContext(try id.request())) } catch { fail("certificate for \(name): \(error)", code: 1) }
    }
    summary.put("certificates_seconds", seconds(Clock.monotonicNanos() - t0), 2)
    note("\(opts.namespaces) workload certificates in \(Summary.fixed(seconds(Clock.monotonicNanos() - t0), 2)) s")

    if opts.sidecarScope {
        let docs = (0..<opts.namespaces).map { ns in
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: \(namespaceName(ns))}\nspec:\n  egress:\n  - hosts: [\"./*\"]\n"
        }.joined(separator: "---\n")
        let r = adminCall(0, "POST", "/v1/config/apply", body: ConfigUpload.encode([("push-load-sidecars.yaml", docs)]), contentType: ConfigUpload.contentType)
        guard r.status == 200 else { fail("meshd refused the Sidecar resources (--sidecar-scope): \(r.status): \(r.body.trimmingCharacters)", code: 1) }
    }

    let plan = Plan(api: opts.api, meshdIdentity: meshdIdentity, contexts: contexts, sources: opts.sources, perSource: opts.perSource, ramp: opts.ramp)
    workers = (0..<opts.threads).map { Worker(id: $0, plan: plan) }
    for w in workers { w.start() }
    let connectStart = Clock.monotonicNanos()
    // Stream i: namespace i % K, thread i % T, API address i % A; the first R of each namespace register.
    var perWorker = [[SimStream]](repeating: [], count: opts.threads)
    for i in 0..<opts.streams {
        let ns = i % opts.namespaces
        let node = "10.\((i >> 16) & 255).\((i >> 8) & 255).\(i & 255):15006"
        let reg = i / opts.namespaces < opts.register
            ? ConfigStream.Registration(service: "svc", namespace: namespaceName(ns), address: node,
                                        labels: [.init(key: "app", value: "svc")], serviceProtocol: "HTTP", servicePort: 8080)
            : nil
        perWorker[i % opts.threads].append(SimStream(index: i, namespace: ns, node: node, registration: reg, addressIndex: i % opts.api.count))
    }
    for (w, list) in zip(workers, perWorker) {
        nonisolated(unsafe) let l = list
        _ = w.sync { w in for s in l { w.add(s) }; return 0 }
    }

    // Every stream's first config, then quiet (registrations change the config for a while).
    var lastNote = Clock.monotonicNanos()
    var allConfigAt: UInt64 = 0
    while true {
        let now = Clock.monotonicNanos()
        let have = sumAll { $0.withConfig.load(ordering: .relaxed) }
        if have >= opts.streams && allConfigAt == 0 {
            allConfigAt = now
            summary.put("connect_seconds", seconds(now - connectStart), 2)
            note("all \(opts.streams) streams have their first config after \(Summary.fixed(seconds(now - connectStart), 2)) s")
        }
        if allConfigAt != 0 {
            let last = workers.map { $0.lastPushAt.load(ordering: .relaxed) }.max() ?? 0
            if now > last && now - last >= opts.quiet && now - allConfigAt >= opts.quiet { break }
        }
        if now - connectStart > opts.connectTimeout {
            let err = workers.map { $0.lastError.withLock { $0 } }.filter { !$0.isEmpty }.first ?? "none"
            note("only \(have) of \(opts.streams) streams got their first config (or pushes never stopped) within the connect timeout; last error: \(err)")
            failedRun = true
            break
        }
        if now - lastNote > 5_000_000_000 {
            lastNote = now
            note("\(have)/\(opts.streams) streams with config, \(sumAll { $0.connected.load(ordering: .relaxed) }) connected, \(sumAll { $0.failures.load(ordering: .relaxed) }) connection failures")
        }
        usleep(20_000)
    }
    summary.put("streams_with_config", sumAll { $0.withConfig.load(ordering: .relaxed) })
    summary.put("streams_connected", sumAll { $0.connected.load(ordering: .relaxed) })
    summary.put("pushes_before_applies", sumAll { $0.pushes.load(ordering: .relaxed) })

    // Idle: meshd and this tool with every stream parked in its long poll.
    if !failedRun && opts.idle > 0 {
        let a = watched(), sa = selfSample()
        usleep(UInt32(min(opts.idle / 1000, UInt64(UInt32.max))))
        let b = watched(), sb = selfSample()
        var w = CPUWindow(); w.add(from: a, to: b)
        var s = CPUWindow(); s.add(from: sa, to: sb)
        summary.put("idle_seconds", seconds(opts.idle), 1)
        summary.putProcs("meshd_idle", b, cpu: w, watched: opts.watchPids.count)
        summary.putProcs("load_idle", sb, cpu: s, watched: 1)
    }

    // Applies: each changes the VirtualService of `svc` in the first namespace (a header value
    // unique to this run and apply, so that no apply is "unchanged", even against a meshd used before).
    let runID = String(Clock.wallNanos() % 1_000_000_000_000, radix: 36)
    var allTimes: [Double] = []
    var ackTimes: [Double] = []
    var unexpectedTotal = 0
    var meshdApply = CPUWindow(), selfApply = CPUWindow()
    var meshdApplyLast: [ProcSample] = []
    var meshdApplyPeakRSS = 0.0
    var completed = 0
    if !failedRun {
        for k in 0..<opts.applies {
            let scope: Int? = opts.sidecarScope ? 0 : nil
            let expected = workers.reduce(0) { n, w in n + w.sync { $0.mark(namespace: scope) } }
            let yaml = """
                apiVersion: networking.istio.io/v1
                kind: VirtualService
                metadata: {name: svc, namespace: \(namespaceName(0))}
                spec:
                  hosts: [svc]
                  http:
                  - route:
                    - destination: {host: svc}
                    headers:
                      request:
                        set: {x-push-load: "\(runID)-\(k + 1)"}

                """
            let pa = watched(), sa = selfSample()
            let start = Clock.monotonicNanos()
            let r = adminCall(k, "POST", "/v1/config/apply", body: ConfigUpload.encode([("push-load-apply-\(k + 1).yaml", yaml)]),
                              contentType: ConfigUpload.contentType)
            let first = r.body.split(separator: "\n").first.map(String.init) ?? ""
            guard r.status == 200, first.hasPrefix("version "), let version = Int(first.dropFirst(8)) else {
                fail("apply \(k + 1): meshd answered \(r.status): \(r.body.trimmingCharacters)", code: 1)
            }
            for w in workers { _ = w.sync { $0.setTarget(version: version, start: start); return 0 } }
            var done = 0
            while true {
                done = sumAll { $0.done.load(ordering: .relaxed) }
                if done >= expected || Clock.monotonicNanos() - start > opts.applyTimeout { break }
                usleep(1000)
            }
            let pb = watched(), sb = selfSample()
            meshdApply.add(from: pa, to: pb)
            selfApply.add(from: sa, to: sb)
            meshdApplyLast = pb
            meshdApplyPeakRSS = max(meshdApplyPeakRSS, pb.reduce(0) { $0 + $1.rssMB })
            usleep(UInt32(opts.settle / 1000))
            let unexpected = sumAll { $0.unexpected.load(ordering: .relaxed) }
            var lat: [UInt64] = []
            for w in workers { lat += w.sync { $0.endMark() } }
            let ms = lat.map { Double($0) / 1e6 }.sorted()
            let all = ms.last ?? 0
            unexpectedTotal += unexpected
            let key = "apply_\(k + 1)"
            summary.put("\(key)_version", version)
            summary.put("\(key)_expected", expected)
            summary.put("\(key)_acked", done)
            summary.put("\(key)_p50_ms", Summary.percentile(ms, 0.5), 1)
            summary.put("\(key)_all_ms", all, 1)
            summary.put("\(key)_unexpected_pushes", unexpected)
            if done < expected {
                let behind = workers.flatMap { w in w.sync { $0.behind(version: version) } }.prefix(5)
                note("apply \(k + 1) (version \(version)): only \(done) of \(expected) ACKed within the apply timeout; e.g. \(behind.joined(separator: ", "))")
                failedRun = true
            } else {
                completed += 1
                allTimes.append(all)
                ackTimes += ms
            }
            note("apply \(k + 1): version \(version), \(done)/\(expected) ACKed, p50 \(Summary.fixed(Summary.percentile(ms, 0.5), 1)) ms, all \(Summary.fixed(all, 1)) ms, \(unexpected) pushes to streams that should not get it")
        }
    }
    summary.put("applies", opts.applies)
    summary.put("applies_completed", completed)
    summary.put("apply_scope", opts.sidecarScope ? "namespace" : "all")
    allTimes.sort()
    ackTimes.sort()
    summary.put("apply_all_acked_p50_ms", Summary.percentile(allTimes, 0.5), 1)
    summary.put("apply_all_acked_p99_ms", Summary.percentile(allTimes, 0.99), 1)
    summary.put("apply_all_acked_max_ms", allTimes.last ?? 0, 1)
    summary.put("ack_p50_ms", Summary.percentile(ackTimes, 0.5), 1)
    summary.put("ack_p99_ms", Summary.percentile(ackTimes, 0.99), 1)
    summary.put("unexpected_pushes", unexpectedTotal)
    if !meshdApplyLast.isEmpty {
        summary.putProcs("meshd_apply", meshdApplyLast, cpu: meshdApply, watched: opts.watchPids.count)
        summary.put("meshd_apply_rss_mb_max", meshdApplyPeakRSS, 1)
    }
    if selfApply.wallSeconds > 0 { summary.putProcs("load_apply", selfSample(), cpu: selfApply, watched: 1) }
    summary.put("reconnects", sumAll { $0.failures.load(ordering: .relaxed) })
    summary.put("ack_refusals", sumAll { $0.refusals.load(ordering: .relaxed) })
    summary.put("pushes_total", sumAll { $0.pushes.load(ordering: .relaxed) })
    summary.put("pushes_full", sumAll { $0.fullPushes.load(ordering: .relaxed) })
    summary.put("pushes_delta", sumAll { $0.deltaPushes.load(ordering: .relaxed) })
    summary.put("push_bytes_full", sumAll { $0.fullBytes.load(ordering: .relaxed) })
    summary.put("push_bytes_delta", sumAll { $0.deltaBytes.load(ordering: .relaxed) })
    let lastErr = workers.map { $0.lastError.withLock { $0 } }.filter { !$0.isEmpty }.first
    if let e = lastErr { note("last stream error: \(e)") }
}

// MARK: CSR signing

if opts.csrClients > 0 {
    let token = mintToken(namespace: "load-csr", serviceAccount: "signer")
    let key: MeshCrypto.PrivateKey
    let csr: String
    do {
        key = try MeshCrypto.PrivateKey.generate()
        csr = try MeshCrypto.csr(key: key, identity: "spiffe://\(opts.trustDomain)/ns/load-csr/sa/signer")
    } catch { fail("making a CSR: \(error)", code: 1) }
    var o = TLSContext.Options(certChainFile: "(none)", privateKeyFile: "(none)", trustBundleFile: "--root-cert")
    o.alpn = ["http/1.1"]
    o.withoutCertificate = true
    o.trustBundlePEM = opts.rootPEM
    o.trustDomain = opts.trustDomain
    let ctx: TLSContext
    do { ctx = try TLSContext(role: .client, options: o) } catch { fail("CSR client TLS context: \(error)", code: 1) }
    let plan = Plan(api: opts.csrAPI, meshdIdentity: meshdIdentity, contexts: [], sources: [], perSource: 1, ramp: 1)
    let signWorkers = (0..<opts.threads).map { Worker(id: 100 + $0, plan: plan) }
    for w in signWorkers { w.start() }
    let tally = SigningTally()
    final class SignerList: @unchecked Sendable { var all: [Signer] = [] }
    let lists = signWorkers.map { _ in SignerList() }
    for c in 0..<opts.csrClients {
        let w = signWorkers[c % signWorkers.count], list = lists[c % signWorkers.count]
        let addr = opts.csrAPI[c % opts.csrAPI.count]
        let ok = w.sync { w -> Bool in
            let fd = Socket.connect(addr)
            if fd < 0 { return false }
            let s = Signer(loop: w.loop, fd: fd, security: TLSSession(context: ctx, expectedPeers: [meshdIdentity]), tally: tally, csr: csr, token: token)
            guard s.start() else { return false }
            list.all.append(s)
            return true
        }
        if !ok { fail("CSR client \(c): cannot connect to \(addr)", code: 1) }
    }
    let readyBy = Clock.monotonicNanos() + 30_000_000_000
    while tally.ready.load(ordering: .relaxed) < opts.csrClients {
        if Clock.monotonicNanos() > readyBy {
            fail("only \(tally.ready.load(ordering: .relaxed)) of \(opts.csrClients) CSR clients finished their TLS handshake in 30 s: \(tally.lastError.withLock { $0 })", code: 1)
        }
        usleep(2000)
    }
    let pa = watched(), sa = selfSample()
    let start = Clock.monotonicNanos()
    tally.end.store(start + UInt64(opts.csrSeconds) * 1_000_000_000, ordering: .relaxed)
    for (w, list) in zip(signWorkers, lists) { _ = w.sync { _ in for s in list.all { s.go() }; return 0 } }
    usleep(UInt32(opts.csrSeconds) * 1_000_000)
    usleep(200_000)   // answers in flight at the end are not counted; let them land
    let pb = watched(), sb = selfSample()
    var mw = CPUWindow(); mw.add(from: pa, to: pb)
    var sw = CPUWindow(); sw.add(from: sa, to: sb)
    let signed = tally.signed.load(ordering: .relaxed)
    summary.put("csr_clients", opts.csrClients)
    summary.put("csr_api_addresses", opts.csrAPI.count)
    summary.put("csr_seconds", opts.csrSeconds)
    summary.put("csr_signed", signed)
    summary.put("csr_refused", tally.refused.load(ordering: .relaxed))
    summary.put("csr_connections_broken", tally.broken.load(ordering: .relaxed))
    summary.put("csr_per_second", Double(signed) / Double(opts.csrSeconds), 1)
    summary.putProcs("meshd_csr", pb, cpu: mw, watched: opts.watchPids.count)
    summary.putProcs("load_csr", sb, cpu: sw, watched: 1)
    if signed > 0 && !opts.watchPids.isEmpty { summary.put("meshd_cpu_us_per_certificate", mw.cpuSeconds * 1e6 / Double(signed), 0) }
    if tally.refused.load(ordering: .relaxed) + tally.broken.load(ordering: .relaxed) > 0 {
        note("CSR run: \(tally.refused.load(ordering: .relaxed)) refused, \(tally.broken.load(ordering: .relaxed)) connections broken; last: \(tally.lastError.withLock { $0 })")
    }
    if signed == 0 { failedRun = true }
    for w in signWorkers { w.stop() }
}

// MARK: the tool itself, and the end

if let me = ProcSample.read("self") {
    summary.put("load_cpu_seconds", me.cpuSeconds, 2)
    summary.put("load_rss_mb", me.rssMB, 1)
    summary.put("load_rss_mb_max", me.hwmMB, 1)
    summary.put("load_threads", me.threads)
}
summary.put("run_seconds", seconds(Clock.monotonicNanos() - runStart), 1)
summary.put("result", failedRun ? "incomplete" : "ok")
print(summary.text, terminator: "")
for w in workers { w.stop() }
exit(failedRun ? 1 : 0)
