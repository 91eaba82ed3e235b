import XCTest
import Glibc
@testable import MeshCore

/// `MappedPages`: which mappings it may unmap (never one holding the process's own pages), and
/// that releasing drops the file pages of this very process while it keeps running.
final class MappedPagesTests: XCTestCase {
    private func smaps(_ entries: [(String, [(String, Int)])]) -> [UInt8] {
        var s = ""
        for (header, fields) in entries {
            s += header + "\n"
            for (k, v) in fields { s += "\(k):\(String(repeating: " ", count: 10))\(v) kB\n" }
            s += "VmFlags: rd ex mr mw me\n"
        }
        return Array(s.utf8)
    }

    private let clean = [("Size", 64), ("Rss", 48), ("Shared_Clean", 0), ("Shared_Dirty", 0), ("Private_Clean", 48),
                         ("Private_Dirty", 0), ("Anonymous", 0), ("Swap", 0)]

    func testOnlyCleanReadOnlyPrivateFileMappingsAreReleasable() {
        func with(_ key: String, _ v: Int) -> [(String, Int)] { clean.map { $0.0 == key ? (key, v) : $0 } }
        let text = smaps([
            ("55d0a0000000-55d0a0010000 r-xp 00000000 fe:00 123   /usr/bin/sidecar", clean),
            ("55d0a0010000-55d0a0020000 r--p 00010000 fe:00 123   /usr/bin/sidecar", clean),
            // RELRO: read-only now, but its pages are the process's relocated copies.
            ("55d0a0020000-55d0a0030000 r--p 00020000 fe:00 123   /usr/bin/sidecar", with("Anonymous", 16)),
            ("55d0a0030000-55d0a0040000 rw-p 00030000 fe:00 123   /usr/bin/sidecar", clean),
            ("55d0a0040000-55d0a0050000 r--s 00000000 fe:00 124   /usr/share/shared.bin", clean),
            ("7f0000000000-7f0000010000 r--p 00000000 00:00 0     [vvar]", clean),
            ("7f0000010000-7f0000020000 r-xp 00000000 00:00 0     [vdso]", clean),
            ("7f0000020000-7f0000030000 r--p 00000000 00:00 0 ", clean),
            ("7f0000030000-7f0000040000 r--p 00000000 fe:00 125   /usr/lib/libswapped.so", with("Swap", 4)),
            // Dirty page-cache pages (a binary just written): the file's, released.
            ("7f0000040000-7f0000050000 r--p 00000000 fe:00 126   /usr/lib/libdirty.so", with("Private_Dirty", 4)),
            ("7f0000050000-7f0000060000 r-xp 00000000 fe:00 127   /usr/bin/justbuilt", with("Shared_Dirty", 48)),
            ("7f0000060000-7f0000070000 r-xp 00000000 fe:00 128   /usr/lib/libnotouched.so", with("Rss", 0)),
            ("7f0000070000-7f0000080000 r-xp 00000000 fe:00 129   /usr/lib/libcrypto.so.3 (deleted)", clean),
        ])
        let maps = MappedPages.parse(text)
        XCTAssertEqual(maps.count, 13)
        XCTAssertEqual(maps[0].start, 0x55d0a0000000)
        XCTAssertEqual(maps[0].end, 0x55d0a0010000)
        XCTAssertEqual(maps[0].path, "/usr/bin/sidecar")
        XCTAssertEqual(maps[0].rssKB, 48)
        XCTAssertEqual(maps[2].ownKB, 16)
        XCTAssertEqual(maps.map(\.releasable),
                       [true, true, false, false, false, false, false, false, false, true, true, false, true])
    }

    func testMalformedHeadersAreNeverReleasable() {
        let text = smaps([
            ("zzzz-55d0a0010000 r-xp 00000000 fe:00 123 /a", clean),       // not hex: a field line, skipped
            ("55d0a0010000 r-xp 00000000 fe:00 123 /b", clean),            // no range
            ("55d0a0020000-55d0a0010000 r-xp 00000000 fe:00 123 /c", clean), // end before start
            ("55d0a0020000-55d0a0030000 r-xp", clean),                      // too few fields
        ])
        XCTAssertFalse(MappedPages.parse(text).contains { $0.releasable })
        XCTAssertTrue(MappedPages.parse([]).isEmpty)
        XCTAssertTrue(MappedPages.parse(Array("\n\n\n".utf8)).isEmpty)
    }

    private func fileRSSOfCode() -> Int {
        let maps = MappedPages.parse(MappedPages.readProcFile("/proc/self/smaps")!)
        return maps.filter { $0.perms == "r-xp" && $0.path.hasPrefix("/") }.reduce(0) { $0 + $1.rssKB }
    }

    private func ownPagesOfReadOnlyMappings() -> [UInt: Int] {
        let maps = MappedPages.parse(MappedPages.readProcFile("/proc/self/smaps")!)
        var out: [UInt: Int] = [:]
        for m in maps where m.perms == "r--p" && m.ownKB > 0 { out[m.start] = m.ownKB }
        return out
    }

    /// This test process: its code's file pages leave its RSS, its RELRO copies stay, and it
    /// keeps running (calls through the GOT into libc and Foundation-free Swift code work).
    func testReleaseDropsThisProcessesCodePagesAndKeepsItsOwnCopies() {
        let before = fileRSSOfCode()
        let relro = ownPagesOfReadOnlyMappings()
        XCTAssertGreaterThan(before, 1024, "the test binary and libraries have more than 1 MiB of code resident")
        XCTAssertFalse(relro.isEmpty, "some read-only mapping holds relocated pages")
        let released = MappedPages.release()
        let after = fileRSSOfCode()
        XCTAssertGreaterThan(released, before / 2)
        XCTAssertLessThan(after, before / 2, "code pages still mapped: \(before) kB -> \(after) kB")
        // Still running: libc through the GOT, Swift's runtime, the relocated copies untouched.
        XCTAssertEqual(strlen("sidecar"), 7)
        XCTAssertEqual([3, 1, 2].sorted(), [1, 2, 3])
        XCTAssertEqual(String(describing: 42), "42")
        let now = ownPagesOfReadOnlyMappings()
        for (start, kb) in relro { XCTAssertEqual(now[start], kb, "relocated pages at \(start) were dropped") }
    }
}
