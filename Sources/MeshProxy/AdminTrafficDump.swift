import MeshConfig
import MeshCore

extension AdminServer {
    /// The compiled traffic routes in `/config_dump`: per VirtualService http route, its label,
    /// targets with weights and endpoints, and the policies in force, as the proxy will apply them.
    func trafficDump(_ j: inout JSONWriter, _ b: Bootstrap) {
        j.beginArray("virtual_service_routes")
        for r in snapshot.routes where !b.routes.contains(where: { $0.name == r.label }) {
            j.beginObject()
            j.string("route", r.label)
            j.string("service", r.serviceFQDN)
            j.number("match_entries", Int64(r.matches.count))
            j.beginArray("destinations")
            var prev = 0
            for (i, t) in r.targets.enumerated() {
                let tg = snapshot.targets[t]
                j.beginObject()
                j.string("target", tg.name)
                j.number("weight", Int64(r.cumulativeWeights[i] - prev))
                prev = r.cumulativeWeights[i]
                j.beginArray("endpoints"); for e in tg.endpoints { j.string(nil, snapshot.clusters[tg.cluster].endpoints[e].text) }; j.endArray()
                j.string("load_balancer", tg.loadBalancer.rawValue)
                j.endObject()
            }
            j.endArray()
            j.number("timeout_ms", r.timeout / 1_000_000)
            j.beginObject("retries")
            j.number("attempts", Int64(r.retry.retries))
            j.number("per_try_timeout_ms", r.retry.perTryTimeout / 1_000_000)
            j.number("retry_on_bits", UInt64(r.retry.on.rawValue))
            j.beginArray("retriable_status_codes"); for c in r.retry.statusCodes { j.number(nil, Int64(c)) }; j.endArray()
            j.endObject()
            if let f = r.fault {
                j.beginObject("fault")
                j.number("delay_ms", f.delay / 1_000_000)
                j.number("delay_percent", Double(f.delayPPM) / 10_000)
                j.number("abort_status", Int64(f.abortStatus))
                j.number("abort_percent", Double(f.abortPPM) / 10_000)
                j.endObject()
            }
            if let a = r.rewriteAuthority { j.string("rewrite_authority", String(decoding: a, as: UTF8.self)) }
            if !r.mirrorTarget.isNone {
                j.string("mirror", snapshot.targets[r.mirrorTarget.index].name)
                j.number("mirror_percent", Double(r.mirrorPPM) / 10_000)
            }
            routingMoreDump(&j, r)
            j.endObject()
        }
        j.endArray()
        j.beginArray("cluster_policies")
        for c in snapshot.clusters {
            j.beginObject()
            j.string("cluster", c.name)
            j.string("load_balancer", c.loadBalancer.rawValue)
            j.number("max_connections", Int64(c.maxConnections))
            j.number("http1_max_pending_requests", Int64(c.maxPendingRequests))
            if c.maxRequests != Int.max { j.number("http2_max_requests", Int64(c.maxRequests)) }
            if c.maxRetries != Int.max { j.number("max_retries", Int64(c.maxRetries)) }
            if let od = c.outlier {
                j.beginObject("outlier_detection")
                j.number("consecutive_5xx", Int64(od.consecutive5xx))
                j.number("consecutive_gateway_errors", Int64(od.consecutiveGateway))
                j.number("base_ejection_time_ms", od.baseEjection / 1_000_000)
                j.number("interval_ms", od.interval / 1_000_000)
                j.number("max_ejection_percent", Int64(od.maxEjectionPercent))
                j.endObject()
            }
            j.endObject()
        }
        j.endArray()
        balancingDump(&j)
    }
}
