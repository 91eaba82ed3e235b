/// A binary min-heap of deadlines for one event loop. Entries are never removed early: a
/// `Pollable` whose deadline moved later keeps its old entry, and when that entry fires the loop
/// re-arms it at the real deadline (lazy rescheduling), so moving a deadline on every read costs
/// one store, not a heap operation.
struct TimerHeap {
    struct Entry { var deadline: UInt64; var slot: Int32; var generation: UInt32 }
    private(set) var entries: [Entry] = []

    init() { entries.reserveCapacity(1024) }

    var isEmpty: Bool { entries.isEmpty }
    var top: Entry? { entries.first }

    mutating func push(_ e: Entry) {
        entries.append(e)
        var i = entries.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if entries[p].deadline <= entries[i].deadline { break }
            entries.swapAt(p, i)
            i = p
        }
    }

    mutating func pop() -> Entry {
        let top = entries[0]
        let last = entries.removeLast()
        if !entries.isEmpty {
            entries[0] = last
            var i = 0
            let n = entries.count
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < n && entries[l].deadline < entries[m].deadline { m = l }
                if r < n && entries[r].deadline < entries[m].deadline { m = r }
                if m == i { break }
                entries.swapAt(m, i)
                i = m
            }
        }
        return top
    }
}
