/// An index into one of the config snapshot's tables, typed by the table it points into (so a
/// route index cannot be used as a cluster index), or none instead of a bare -1.
struct SnapshotIndex<Table>: Equatable {
    let raw: Int32
    init(_ i: Int) { raw = Int32(truncatingIfNeeded: i) }
    static var none: SnapshotIndex<Table> { SnapshotIndex(-1) }
    @inline(__always) var isNone: Bool { raw < 0 }
    @inline(__always) var index: Int { Int(raw) }
}

/// The tables an index can point into.
enum ClusterTable {}
enum RouteTableRows {}
enum TargetTable {}

/// An index into the snapshot's `clusters`.
typealias ClusterID = SnapshotIndex<ClusterTable>
/// An index into the snapshot's `routes` (inbound requests have none).
typealias RouteID = SnapshotIndex<RouteTableRows>
/// An index into the snapshot's route `targets` (a weighted destination; none: the whole cluster).
typealias TargetID = SnapshotIndex<TargetTable>
