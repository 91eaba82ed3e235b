/// A failed etcd call: what failed, naming the endpoint where one was involved.
public struct EtcdError: Error, CustomStringConvertible {
    public var message: String
    /// gRPC's status code when etcd answered with an error (5: not found, 9: failed
    /// precondition, 11: out of range, 14: unavailable); nil for network and protocol failures.
    public var code: Int?
    public init(_ message: String, code: Int? = nil) { self.message = message; self.code = code }
    public init(message: String, code: Int? = nil) { self.message = message; self.code = code }
    public var description: String { message }
}

/// One key-value pair as etcd stores it (revisions are the store's revisions).
public struct EtcdKeyValue: Sendable, Equatable {
    public var key: String
    public var value: [UInt8]
    public var createRevision: Int64
    public var modRevision: Int64
    public var version: Int64
    public var lease: Int64

    public init(key: String, value: [UInt8], createRevision: Int64, modRevision: Int64, version: Int64, lease: Int64) {
        self.key = key; self.value = value; self.createRevision = createRevision
        self.modRevision = modRevision; self.version = version; self.lease = lease
    }

    /// The value decoded as UTF-8 (invalid sequences replaced by U+FFFD).
    public var valueText: String { String(decoding: value, as: UTF8.self) }
}

/// One comparison of a transaction; every one compares with EQUAL.
public enum EtcdCompare: Sendable, Equatable {
    /// The key's mod revision equals n (0: the key is absent).
    case modRevision(String, Int64)
    /// The key's create revision equals n (0: the key is absent).
    case createRevision(String, Int64)
    case value(String, [UInt8])
    case lease(String, Int64)
}

/// One operation of a transaction branch.
public enum EtcdOp: Sendable, Equatable {
    case put(String, [UInt8], lease: Int64 = 0)
    case delete(String)
    /// Every key starting with the prefix (an empty prefix is refused: it would be every key).
    case deletePrefix(String)
    case get(String)
}

/// What a transaction did.
public struct EtcdTxnResult: Sendable {
    public var succeeded: Bool
    /// The store's revision after the transaction (unchanged when it wrote nothing).
    public var revision: Int64
    /// The kvs of the `.get` ops of the branch that ran, in order (a key not found adds nothing).
    public var gets: [EtcdKeyValue]
    /// One entry per `.get` op of the branch that ran, in order: its kv, or nil when not found.
    public var getResults: [EtcdKeyValue?]
}

/// One change seen by a watch.
public enum EtcdEvent: Sendable, Equatable {
    case put(EtcdKeyValue)
    case delete(key: String, modRevision: Int64)

    /// The revision of the change.
    public var modRevision: Int64 {
        switch self {
        case .put(let kv): return kv.modRevision
        case .delete(_, let r): return r
        }
    }
}

/// Why a watch returned.
public enum EtcdWatchEnd: Sendable, Equatable {
    /// The start revision (or the revision to resume from) was compacted away: list again at the
    /// current revision and watch from there + 1.
    case compacted(compactRevision: Int64)
    /// `onEvents` returned false, or `stopWatches()` was called.
    case stopped
}
