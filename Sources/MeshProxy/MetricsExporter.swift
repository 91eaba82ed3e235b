import MeshStats
import MeshTLS

/// Renders `/stats/prometheus`: every worker's series summed (peer indices translated to names
/// first, since each worker interns its own), with Istio's metric names, units and labels
/// (DESIGN §6) plus the `route` label, and the proxy's own `mesh_` health metrics. Admin thread.
struct MetricsExporter {
    let workers: [Worker]
    let snapshot: ProxySnapshot
    let localIdentity: String
    let configAppliedAt: Int64
    let certExpiry: Int64

    private struct MergeKey: Hashable { let key: UInt64; let peer: PeerTable.Peer }

    func render() -> String {
        var p = PrometheusText()
        let b = snapshot.bootstrap
        let wl = b.workload
        let app = wl.labels.first { $0.0 == "app" }?.1 ?? wl.service
        let version = wl.labels.first { $0.0 == "version" }?.1 ?? "unknown"
        let principal = localIdentity.isEmpty ? "unknown" : localIdentity

        // Merge request series across workers.
        var merged: [MergeKey: [UInt64]] = [:]
        var order: [MergeKey] = []
        let slotCount = ProxyMetrics.Slot.count
        for w in workers {
            w.metrics.requests.forEach { key, slots in
                let peer = key == SeriesTable.overflowKey ? PeerTable.Peer() : w.metrics.peers.peer(MetricKey.peer(key))
                let mk = MergeKey(key: key == SeriesTable.overflowKey ? key : key & ~(UInt64(0xFFFF) << 32), peer: peer)
                if merged[mk] == nil { merged[mk] = Array(repeating: 0, count: slotCount); order.append(mk) }
                for i in 0..<slotCount { merged[mk]![i] &+= slots[i] }
            }
        }
        var tcpMerged: [MergeKey: [UInt64]] = [:]
        var tcpOrder: [MergeKey] = []
        for w in workers {
            w.metrics.tcp.forEach { key, slots in
                let peer = key == SeriesTable.overflowKey ? PeerTable.Peer() : w.metrics.peers.peer(MetricKey.peer(key))
                let mk = MergeKey(key: key == SeriesTable.overflowKey ? key : key & ~(UInt64(0xFFFF) << 32), peer: peer)
                if tcpMerged[mk] == nil { tcpMerged[mk] = Array(repeating: 0, count: ProxyMetrics.TCPSlot.count); tcpOrder.append(mk) }
                for i in 0..<ProxyMetrics.TCPSlot.count { tcpMerged[mk]![i] &+= slots[i] }
            }
        }

        func labels(_ mk: MergeKey, withCode: Bool) -> [(String, String)] {
            let overflow = mk.key == SeriesTable.overflowKey
            let inbound = !overflow && MetricKey.inbound(mk.key)
            let pp = mk.peer
            let local = (wl.name, wl.namespace, principal, app, version)
            let peer = (pp.workload, pp.namespace, pp.principal, pp.app, pp.version)
            let src = inbound ? peer : local
            let dst = inbound ? local : peer
            var svcFQDN = "unknown", svcName = "unknown", svcNS = "unknown", route = "-"
            let r = overflow ? MetricKey.noRoute : MetricKey.route(mk.key)
            if overflow {
                route = "overflow"
            } else if r == MetricKey.inboundRoute {
                svcFQDN = "\(wl.service).\(wl.namespace).svc.cluster.local"
                svcName = wl.service
                svcNS = wl.namespace
                route = "inbound"
            } else if r == RouteCatalog.overflowID {
                route = "overflow"
            } else if let rt = RouteCatalog.shared.entry(r) {
                svcFQDN = rt.serviceFQDN
                svcName = rt.serviceName
                svcNS = rt.serviceNamespace
                route = rt.label
            }
            var l: [(String, String)] = [
                ("reporter", inbound ? "destination" : "source"),
                ("source_workload", src.0), ("source_workload_namespace", src.1), ("source_principal", src.2),
                ("source_app", src.3), ("source_version", src.4),
                ("destination_workload", dst.0), ("destination_workload_namespace", dst.1), ("destination_principal", dst.2),
                ("destination_app", dst.3), ("destination_version", dst.4),
                ("destination_service", svcFQDN), ("destination_service_name", svcName), ("destination_service_namespace", svcNS),
                ("request_protocol", overflow ? "http" : MetricKey.tcp(mk.key) ? "tcp" : MetricKey.grpc(mk.key) >= 0 ? "grpc" : "http"),
            ]
            if withCode {
                l.append(("response_code", overflow ? "0" : String(MetricKey.code(mk.key))))
                let g = overflow ? -1 : MetricKey.grpc(mk.key)
                l.append(("grpc_response_status", g < 0 || g > 16 ? "" : String(g)))
                l.append(("response_flags", overflow ? "-" : "\(MetricKey.flag(mk.key).code)"))
            }
            if !withCode && !overflow && MetricKey.tcp(mk.key) { l.append(("response_flags", "\(MetricKey.flag(mk.key).code)")) }
            l.append(("connection_security_policy", inbound ? (!overflow && MetricKey.tcp(mk.key) && mk.peer.principal == "unknown" ? "none" : "mutual_tls") : "unknown"))
            l.append(("route", route))
            return l
        }

        typealias S = ProxyMetrics.Slot
        p.family("istio_requests_total", type: "counter", help: "Requests handled by this proxy, by route, response code and flags.")
        for mk in order { p.sample("istio_requests_total", labels(mk, withCode: true), merged[mk]![S.requests]) }

        func histogram(_ name: String, help: String, sumSlot: Int, bucketSlot: Int, buckets: Buckets, sumScale: Double) {
            p.family(name, type: "histogram", help: help)
            for mk in order {
                let v = merged[mk]!
                let base = labels(mk, withCode: true)
                var cum: UInt64 = 0
                for (i, le) in buckets.labels.enumerated() {
                    cum &+= v[bucketSlot + i]
                    p.sample(name + "_bucket", base + [("le", le)], cum)
                }
                cum &+= v[bucketSlot + buckets.labels.count]
                p.sample(name + "_bucket", base + [("le", "+Inf")], cum)
                p.sample(name + "_sum", base, formatNumber(Double(v[sumSlot]) * sumScale))
                p.sample(name + "_count", base, cum)
            }
        }
        histogram("istio_request_duration_milliseconds", help: "Time from the request head to the end of the response, in milliseconds.",
                  sumSlot: S.durationSum, bucketSlot: S.durationBuckets, buckets: .istioDurationMillis, sumScale: 0.001)
        histogram("istio_request_bytes", help: "Request sizes (head and body), in bytes.",
                  sumSlot: S.requestBytesSum, bucketSlot: S.requestBuckets, buckets: .istioBytes, sumScale: 1)
        histogram("istio_response_bytes", help: "Response sizes (head and body), in bytes.",
                  sumSlot: S.responseBytesSum, bucketSlot: S.responseBuckets, buckets: .istioBytes, sumScale: 1)

        typealias T = ProxyMetrics.TCPSlot
        let tcpFamilies: [(String, Int, String)] = [
            ("istio_tcp_connections_opened_total", T.opened, "TCP connections opened: opaque TCP (request_protocol=\"tcp\") and tunnels after an HTTP upgrade."),
            ("istio_tcp_connections_closed_total", T.closed, "TCP connections closed (opaque TCP and HTTP upgrade tunnels), by response flags."),
            ("istio_tcp_sent_bytes_total", T.sent, "Bytes sent to the downstream (the response direction) over TCP connections and tunnels."),
            ("istio_tcp_received_bytes_total", T.received, "Bytes received from the downstream (the request direction) over TCP connections and tunnels."),
        ]
        for (name, slot, help) in tcpFamilies {
            p.family(name, type: "counter", help: help)
            for mk in tcpOrder { p.sample(name, labels(mk, withCode: false), tcpMerged[mk]![slot]) }
        }

        // Health of the proxy itself.
        func total(_ c: WorkerStats.Counter) -> UInt64 { workers.reduce(0) { $0 &+ $1.stats.get(c) } }
        p.family("mesh_retries_total", type: "counter", help: "Upstream requests retried, by what failed.")
        p.sample("mesh_retries_total", [("reason", "connect_failure")], total(.retries))
        p.sample("mesh_retries_total", [("reason", "status")], total(.retriesStatus))
        p.sample("mesh_retries_total", [("reason", "reset")], total(.retriesReset))
        p.sample("mesh_retries_total", [("reason", "per_try_timeout")], total(.retriesTimeout))
        p.sample("mesh_retries_total", [("reason", "keepalive_race")], total(.upstreamKeepAliveRaceRetries))
        p.sample("mesh_retries_total", [("reason", "unstarted_connection")], total(.upstreamUnstartedRetries))
        p.family("mesh_retry_budget_exceeded_total", type: "counter", help: "Retries not made because the retry budget or maxRetries was used up.")
        p.sample("mesh_retry_budget_exceeded_total", [], total(.retryOverflow))
        p.family("mesh_outlier_ejections_total", type: "counter", help: "Endpoints ejected by outlier detection.")
        p.sample("mesh_outlier_ejections_total", [], total(.outlierEjections))
        p.family("mesh_faults_injected_total", type: "counter", help: "Requests delayed or aborted by fault injection.")
        p.sample("mesh_faults_injected_total", [("type", "abort")], total(.faultAborts))
        p.sample("mesh_faults_injected_total", [("type", "delay")], total(.faultDelays))
        p.family("mesh_authz_denied_total", type: "counter", help: "Inbound requests denied by an AuthorizationPolicy (403).")
        p.sample("mesh_authz_denied_total", [], total(.authzDenied))
        p.family("mesh_jwt_rejected_total", type: "counter", help: "Inbound requests refused by a RequestAuthentication: a token that failed verification (401).")
        p.sample("mesh_jwt_rejected_total", [], total(.jwtRejected))
        p.family("mesh_authz_audited_total", type: "counter", help: "Inbound requests an AUDIT AuthorizationPolicy matched (not denied; marked for audit).")
        p.sample("mesh_authz_audited_total", [], total(.authzAudited))
        p.family("mesh_mirror_requests_total", type: "counter", help: "Requests copied to a mirror, and those not copied (body not buffered).")
        p.sample("mesh_mirror_requests_total", [("result", "sent")], total(.mirrorRequests))
        p.sample("mesh_mirror_requests_total", [("result", "skipped")], total(.mirrorSkipped))
        p.family("mesh_local_rate_limited_total", type: "counter", help: "Requests refused with 429 (RL) by a LocalRateLimit token bucket.")
        p.sample("mesh_local_rate_limited_total", [], total(.rateLimited))
        p.family("mesh_direct_replies_total", type: "counter", help: "Requests answered by a route's redirect, directResponse or CORS preflight, without an upstream.")
        p.sample("mesh_direct_replies_total", [("kind", "redirect")], total(.redirects))
        p.sample("mesh_direct_replies_total", [("kind", "direct_response")], total(.directResponses))
        p.sample("mesh_direct_replies_total", [("kind", "cors_preflight")], total(.corsPreflights))
        p.family("mesh_downstream_rejected_total", type: "counter", help: "Downstream requests or connections refused for bad or hostile input, by reason.")
        p.sample("mesh_downstream_rejected_total", [("reason", "bad_request")], total(.badRequests))
        p.sample("mesh_downstream_rejected_total", [("reason", "uri_too_long")], total(.uriTooLong))
        p.sample("mesh_downstream_rejected_total", [("reason", "headers_too_large")], total(.headersTooLarge))
        p.sample("mesh_downstream_rejected_total", [("reason", "header_timeout")], total(.headerTimeouts))
        p.sample("mesh_downstream_rejected_total", [("reason", "h2_rapid_reset")], total(.http2RapidResetClosures))
        p.sample("mesh_downstream_rejected_total", [("reason", "h2_flood")], total(.http2Floods))
        p.sample("mesh_downstream_rejected_total", [("reason", "h2_protocol_error")], total(.http2ProtocolErrors))
        p.sample("mesh_downstream_rejected_total", [("reason", "h2_malformed")], total(.http2MalformedRequests))
        p.sample("mesh_downstream_rejected_total", [("reason", "stream_idle_timeout")], total(.streamIdleTimeouts))
        p.sample("mesh_downstream_rejected_total", [("reason", "connection_limit")], total(.connectionLimit))
        p.family("mesh_upstream_connect_failures_total", type: "counter", help: "Upstream connection attempts that failed (refused, timed out, TLS refused).")
        p.sample("mesh_upstream_connect_failures_total", [], total(.upstreamConnectFailures))
        p.family("mesh_tls_handshakes_total", type: "counter", help: "TLS handshakes by result, both directions.")
        p.sample("mesh_tls_handshakes_total", [("result", "ok")], total(.tlsHandshakesOK))
        p.sample("mesh_tls_handshakes_total", [("result", "failed")], total(.tlsHandshakesFailed))
        p.family("mesh_tls_sessions_resumed_total", type: "counter", help: "TLS handshakes that resumed a session.")
        p.sample("mesh_tls_sessions_resumed_total", [], total(.tlsSessionsResumed))
        p.family("mesh_downstream_connections_active", type: "gauge", help: "Open downstream connections.")
        p.sample("mesh_downstream_connections_active", [], total(.downstreamConnectionsActive))
        p.family("mesh_upstream_connections_active", type: "gauge", help: "Open upstream connections (pooled or in use).")
        p.sample("mesh_upstream_connections_active", [], total(.upstreamConnectionsActive))
        p.family("mesh_config_version_info", type: "gauge", help: "The config version in force (value is always 1).")
        p.sample("mesh_config_version_info", [("version", snapshot.version)], 1)
        p.family("mesh_config_last_applied_timestamp_seconds", type: "gauge", help: "When the config in force was applied (Unix time).")
        p.sample("mesh_config_last_applied_timestamp_seconds", [], UInt64(max(configAppliedAt, 0)))
        if certExpiry > 0 {
            p.family("mesh_certificate_expiry_timestamp_seconds", type: "gauge", help: "When this workload's certificate expires (Unix time).")
            p.sample("mesh_certificate_expiry_timestamp_seconds", [("identity", principal)], UInt64(certExpiry))
        }
        p.family("mesh_metric_series", type: "gauge", help: "Request metric series held (bounded; beyond the bound requests count under route=\"overflow\").")
        p.sample("mesh_metric_series", [], UInt64(order.count))
        TraceExporter.render(&p)
        return p.text
    }
}
