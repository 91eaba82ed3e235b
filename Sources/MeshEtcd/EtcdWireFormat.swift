import MeshCore

/// The JSON of etcd's gRPC gateway, both ways: request bodies (keys and values base64, 64-bit
/// integers as strings) and the fields read from answers (integers as strings or numbers,
/// absent when zero).
enum EtcdWire {
    /// The first key after every key starting with `prefix` (etcd's GetPrefixRangeEnd): the
    /// prefix with its last byte below 0xFF incremented and what follows dropped; `[0]` (to
    /// the end of the key space) when there is none.
    static func prefixEnd(_ prefix: [UInt8]) -> [UInt8] {
        var end = prefix
        while let last = end.last {
            if last < 0xFF { end[end.count - 1] = last + 1; return end }
            end.removeLast()
        }
        return [0]
    }

    static func int64(_ v: JSONValue?, _ field: String) throws(EtcdError) -> Int64 {
        guard let v else { return 0 }
        guard let n = v.int64Value else { throw EtcdError("etcd answer: field \(field) is not a 64-bit integer") }
        return n
    }

    static func uint64(_ v: JSONValue?, _ field: String) throws(EtcdError) -> UInt64 {
        guard let v else { return 0 }
        guard let n = v.uint64Value else { throw EtcdError("etcd answer: field \(field) is not an unsigned 64-bit integer") }
        return n
    }

    static func bytes(_ v: JSONValue?, _ field: String) throws(EtcdError) -> [UInt8] {
        guard let v else { return [] }
        guard let s = v.stringValue, let b = Base64.decode(s) else { throw EtcdError("etcd answer: field \(field) is not base64") }
        return b
    }

    static func keyText(_ bytes: [UInt8]) throws(EtcdError) -> String {
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw EtcdError("etcd answer: key \(JSONWriter.quote(String(decoding: bytes, as: UTF8.self))) is not valid UTF-8")
        }
        return s
    }

    /// The header's revision (0 when absent).
    static func revision(_ answer: JSONValue) throws(EtcdError) -> Int64 {
        try int64(answer["header"]?["revision"], "header.revision")
    }

    static func keyValue(_ v: JSONValue) throws(EtcdError) -> EtcdKeyValue {
        guard v.isObject, let k = v["key"] else { throw EtcdError("etcd answer: a kv without a key") }
        return EtcdKeyValue(key: try keyText(try bytes(k, "kv.key")), value: try bytes(v["value"], "kv.value"),
                            createRevision: try int64(v["create_revision"], "kv.create_revision"),
                            modRevision: try int64(v["mod_revision"], "kv.mod_revision"),
                            version: try int64(v["version"], "kv.version"), lease: try int64(v["lease"], "kv.lease"))
    }

    static func keyValues(_ v: JSONValue?) throws(EtcdError) -> [EtcdKeyValue] {
        guard let v else { return [] }
        guard let a = v.arrayValue else { throw EtcdError("etcd answer: kvs is not an array") }
        var out: [EtcdKeyValue] = []
        out.reserveCapacity(a.count)
        for e in a { out.append(try keyValue(e)) }
        return out
    }

    static func event(_ v: JSONValue) throws(EtcdError) -> EtcdEvent {
        guard let kvJSON = v["kv"] else { throw EtcdError("etcd answer: an event without kv") }
        let type = v["type"]?.stringValue ?? "PUT"
        switch type {
        case "PUT":
            return .put(try keyValue(kvJSON))
        case "DELETE":
            guard let k = kvJSON["key"] else { throw EtcdError("etcd answer: a delete event without a key") }
            return .delete(key: try keyText(try bytes(k, "kv.key")), modRevision: try int64(kvJSON["mod_revision"], "kv.mod_revision"))
        default:
            throw EtcdError("etcd answer: event type \(JSONWriter.quote(type))")
        }
    }

    static func compare(_ c: EtcdCompare, _ w: inout JSONWriter) {
        w.beginObject()
        w.string("result", "EQUAL")
        switch c {
        case .modRevision(let k, let n):
            w.string("target", "MOD"); w.string("key", Base64.encode(k)); w.string("mod_revision", String(n))
        case .createRevision(let k, let n):
            w.string("target", "CREATE"); w.string("key", Base64.encode(k)); w.string("create_revision", String(n))
        case .value(let k, let v):
            w.string("target", "VALUE"); w.string("key", Base64.encode(k)); w.string("value", Base64.encode(v))
        case .lease(let k, let n):
            w.string("target", "LEASE"); w.string("key", Base64.encode(k)); w.string("lease", String(n))
        }
        w.endObject()
    }

    static func op(_ o: EtcdOp, _ w: inout JSONWriter) throws(EtcdError) {
        w.beginObject()
        switch o {
        case .put(let k, let v, let lease):
            w.beginObject("request_put")
            w.string("key", Base64.encode(k)); w.string("value", Base64.encode(v))
            if lease != 0 { w.string("lease", String(lease)) }
            w.endObject()
        case .delete(let k):
            w.beginObject("request_delete_range"); w.string("key", Base64.encode(k)); w.endObject()
        case .deletePrefix(let p):
            if p.isEmpty { throw EtcdError("etcd txn: deletePrefix with an empty prefix would delete every key: refused") }
            w.beginObject("request_delete_range")
            w.string("key", Base64.encode(p)); w.string("range_end", Base64.encode(prefixEnd(Array(p.utf8))))
            w.endObject()
        case .get(let k):
            w.beginObject("request_range"); w.string("key", Base64.encode(k)); w.endObject()
        }
        w.endObject()
    }

    static func txnBody(compare: [EtcdCompare], success: [EtcdOp], failure: [EtcdOp]) throws(EtcdError) -> String {
        var w = JSONWriter()
        w.beginObject()
        w.beginArray("compare"); for c in compare { Self.compare(c, &w) }; w.endArray()
        w.beginArray("success"); for o in success { try op(o, &w) }; w.endArray()
        w.beginArray("failure"); for o in failure { try op(o, &w) }; w.endArray()
        w.endObject()
        return w.text
    }

    /// The `.get` results of the branch that ran: one per `.get` op, in order.
    static func txnGets(_ answer: JSONValue, ops: [EtcdOp]) throws(EtcdError) -> [EtcdKeyValue?] {
        let responses = answer["responses"]?.arrayValue ?? []
        guard responses.count == ops.count else {
            throw EtcdError("etcd txn: \(responses.count) responses for \(ops.count) operations")
        }
        var out: [EtcdKeyValue?] = []
        for (o, r) in zip(ops, responses) {
            guard case .get = o else { continue }
            guard let range = r["response_range"] else { throw EtcdError("etcd txn: a get answered without response_range") }
            out.append(try keyValues(range["kvs"]).first)
        }
        return out
    }
}
