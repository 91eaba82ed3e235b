import CMeshShims

/// A per-worker pseudo-random generator (wyrand), seeded from the kernel. Not for keys or tokens:
/// it picks endpoints, jitter and request ids, where speed matters and no secret is involved.
public struct FastRandom: RandomNumberGenerator {
    private var state: UInt64

    public init() {
        var seed: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &seed) { getrandom($0.baseAddress, 8, 0) }
        self.state = seed | 1
    }

    public init(seed: UInt64) { self.state = seed }

    @inline(__always) public mutating func next() -> UInt64 {
        state &+= 0xa076_1d64_78bd_642f
        let m = state.multipliedFullWidth(by: state ^ 0xe703_7ed1_a0b4_28db)
        return m.high ^ m.low
    }
}
