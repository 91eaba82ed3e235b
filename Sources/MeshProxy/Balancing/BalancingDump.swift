import MeshCore

extension AdminServer {
    /// `/config_dump`'s `target_balancing`: each route target with a consistent hash, locality
    /// levels or warm-up, as compiled: the hash key, the table, and the endpoints of each level.
    func balancingDump(_ j: inout JSONWriter) {
        j.beginArray("target_balancing")
        for t in snapshot.targets {
            guard let bal = t.balancing else { continue }
            let c = snapshot.clusters[t.cluster]
            j.beginObject()
            j.string("target", t.name)
            if let key = bal.hashKey {
                j.beginObject("consistent_hash")
                switch key {
                case .header(let h): j.string("http_header_name", String(decoding: h, as: UTF8.self))
                case .cookie(let n, let suffix):
                    j.string("http_cookie", String(decoding: n, as: UTF8.self))
                    j.string("set_cookie_attributes", String(decoding: suffix, as: UTF8.self))
                case .sourceIP: j.bool("use_source_ip", true)
                case .queryParameter(let q): j.string("http_query_parameter_name", String(decoding: q, as: UTF8.self))
                }
                if let table = bal.table {
                    j.string("table", table.kind == .ring ? "RING_HASH" : "MAGLEV")
                    j.number("table_size", Int64(table.count))
                }
                j.endObject()
            } else {
                j.string("load_balancer", t.loadBalancer.rawValue)
            }
            if let w = bal.levelWeights {
                j.beginArray("locality_percent")
                for x in w { j.number(nil, Double(x) / 10_000) }
                j.endArray()
            }
            j.beginArray(bal.levelWeights == nil ? "priorities" : "localities")
            for level in bal.levels {
                j.beginArray()
                for pos in level { j.string(nil, "\(c.endpoints[t.endpoints[pos]])") }
                j.endArray()
            }
            j.endArray()
            if let w = bal.warmup {
                j.beginObject("warmup")
                j.number("duration_ms", w.duration / 1_000_000)
                j.number("minimum_percent", Double(w.minimumPPM) / 10_000)
                j.number("aggression", w.aggression)
                j.endObject()
            }
            j.endObject()
        }
        j.endArray()
    }
}
