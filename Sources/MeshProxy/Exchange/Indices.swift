/// An index into the snapshot's `clusters`, or none.
struct ClusterID: Equatable {
    let raw: Int32
    init(_ i: Int) { raw = Int32(truncatingIfNeeded: i) }
    static let none = ClusterID(-1)
    @inline(__always) var isNone: Bool { raw < 0 }
    @inline(__always) var index: Int { Int(raw) }
}

/// An index into the snapshot's `routes`, or none (inbound requests have no route).
struct RouteID: Equatable {
    let raw: Int32
    init(_ i: Int) { raw = Int32(truncatingIfNeeded: i) }
    static let none = RouteID(-1)
    @inline(__always) var isNone: Bool { raw < 0 }
    @inline(__always) var index: Int { Int(raw) }
}

/// An index into the snapshot's route `targets` (a weighted destination), or none (the whole
/// cluster: inbound).
struct TargetID: Equatable {
    let raw: Int32
    init(_ i: Int) { raw = Int32(truncatingIfNeeded: i) }
    static let none = TargetID(-1)
    @inline(__always) var isNone: Bool { raw < 0 }
    @inline(__always) var index: Int { Int(raw) }
}
