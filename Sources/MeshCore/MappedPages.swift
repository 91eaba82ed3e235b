import Glibc

/// Unmaps the clean file pages (code and read-only data) of the executable and its shared
/// libraries from this process's page tables, so an idle process's RSS holds only what it
/// touches while idle. The pages stay in the page cache: the next access is a minor fault that
/// maps them back (the kernel maps 64 KiB around each fault), never a read from disk unless
/// the system evicted them meanwhile. Most of an idle sidecar's RSS is such pages touched once
/// at start-up (config parsing, the first certificate, OpenSSL's initialisation), each fault
/// having mapped 64 KiB around it (`fault_around_bytes`; `MADV_RANDOM` does not turn that off on
/// this kernel, measured in docs/benchmarks.md).
///
/// Only private, non-writable, file-backed mappings whose every page is a page of the file are
/// released (smaps: `Anonymous` and `Swap` 0): a RELRO segment (read-only after relocation, but
/// its pages are the process's own copies) is left alone, since dropping it would bring back the
/// unrelocated file contents. The dirty counts do not matter: a page-cache page that is dirty
/// (a binary written moments ago, not yet written back) is the file's, counted as
/// `Shared_Dirty`, or `Private_Dirty` when only this process maps it, and stays in the cache.
public enum MappedPages {
    /// One mapping from /proc/self/smaps.
    struct Mapping: Equatable {
        var start: UInt = 0
        var end: UInt = 0
        var perms: String = ""
        var path: String = ""
        var rssKB = 0
        /// Anonymous + Swap, in kB: the process's own copies of pages (written, relocated).
        var ownKB = 0

        /// A mapping `release` may drop: file-backed, private, not writable, only the file's pages.
        var releasable: Bool {
            path.hasPrefix("/") && (perms == "r-xp" || perms == "r--p") && ownKB == 0 && rssKB > 0
        }
    }

    /// Parses smaps text into mappings (the fields `release` needs).
    static func parse(_ bytes: [UInt8]) -> [Mapping] {
        var out: [Mapping] = []
        var cur: Mapping? = nil
        var i = 0
        let n = bytes.count
        while i < n {
            var j = i
            while j < n && bytes[j] != 10 { j += 1 }
            let line = bytes[i..<j]
            i = j + 1
            guard let first = line.first else { continue }
            // A header starts with a hex digit ("start-end perms ..."); a field with a capital letter.
            let isHex = (first >= 48 && first <= 57) || (first >= 97 && first <= 102)
            if isHex {
                if let c = cur { out.append(c) }
                cur = header(Array(line))
                continue
            }
            guard cur != nil, let colon = line.firstIndex(of: 58) else { continue }
            let key = String(decoding: line[line.startIndex..<colon], as: UTF8.self)
            var v = 0
            for b in line[(colon + 1)...] where b >= 48 && b <= 57 { v = v &* 10 &+ Int(b &- 48) }
            switch key {
            case "Rss": cur!.rssKB = v
            case "Anonymous", "Swap": cur!.ownKB += v
            default: break
            }
        }
        if let c = cur { out.append(c) }
        return out
    }

    /// "start-end perms offset dev inode [path]"; nil when malformed.
    private static func header(_ line: [UInt8]) -> Mapping? {
        var fields: [ArraySlice<UInt8>] = []
        var k = 0
        while k < line.count && fields.count < 5 {
            while k < line.count && line[k] == 32 { k += 1 }
            let s = k
            while k < line.count && line[k] != 32 { k += 1 }
            if s < k { fields.append(line[s..<k]) }
        }
        guard fields.count == 5 else { return nil }
        while k < line.count && line[k] == 32 { k += 1 }
        var m = Mapping()
        guard let dash = fields[0].firstIndex(of: 45),
              let a = UInt(String(decoding: fields[0][fields[0].startIndex..<dash], as: UTF8.self), radix: 16),
              let b = UInt(String(decoding: fields[0][(dash + 1)...], as: UTF8.self), radix: 16), a < b
        else { return nil }
        m.start = a
        m.end = b
        m.perms = String(decoding: fields[1], as: UTF8.self)
        m.path = String(decoding: line[k...], as: UTF8.self)
        return m
    }

    /// Reads a /proc file whole (its size is unknown beforehand); nil if it cannot be opened.
    static func readProcFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        out.reserveCapacity(128 * 1024)
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let r = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { break }
            out.append(contentsOf: chunk[0..<r])
        }
        return out
    }

    /// Drops the clean file pages of every releasable mapping of this process; returns the
    /// resident kB they held (what RSS fell by, less what other threads touch again at once).
    /// Costs one read of /proc/self/smaps and a madvise per mapping: call it when the process
    /// has gone quiet, never on a request path.
    @discardableResult
    public static func release() -> Int {
        guard let text = readProcFile("/proc/self/smaps") else { return 0 }
        var kb = 0
        for m in parse(text) where m.releasable {
            if madvise(UnsafeMutableRawPointer(bitPattern: m.start), Int(m.end - m.start), MADV_DONTNEED) == 0 {
                kb += m.rssKB
            }
        }
        return kb
    }
}
