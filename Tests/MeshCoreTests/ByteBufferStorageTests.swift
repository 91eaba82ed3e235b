import XCTest
@testable import MeshCore

/// Lazy allocation and `releaseStorage()`: what idle connections rely on to cost little memory.
final class ByteBufferStorageTests: XCTestCase {
    func testLazyBufferAllocatesAtFirstWrite() {
        let b = ByteBuffer(lazyCapacity: 1024)
        XCTAssertFalse(b.hasStorage)
        XCTAssertEqual(b.capacity, 0)
        XCTAssertTrue(b.isEmpty)
        XCTAssertEqual(b.readableBytes, 0)
        b.append("hello" as StaticString)
        XCTAssertTrue(b.hasStorage)
        XCTAssertEqual(b.capacity, 1024)
        XCTAssertEqual(b.string(b.readIndex, b.writeIndex), "hello")
    }

    func testReleaseOnlyWhenEmptyAndUsableAfter() {
        let b = ByteBuffer(capacity: 256)
        b.append("abc" as StaticString)
        XCTAssertFalse(b.releaseStorage(), "a buffer holding bytes keeps them")
        XCTAssertEqual(b.string(b.readIndex, b.writeIndex), "abc")
        b.consume(3)
        XCTAssertTrue(b.releaseStorage())
        XCTAssertFalse(b.hasStorage)
        XCTAssertFalse(b.releaseStorage(), "already released")
        // Every way of writing brings the memory back, at least the initial capacity.
        b.reserve(10)
        XCTAssertEqual(b.capacity, 256)
        b.releaseStorage()
        let big = [UInt8](repeating: 7, count: 1000)
        b.append(big)
        XCTAssertGreaterThanOrEqual(b.capacity, 1000)
        XCTAssertEqual(b.readableArray, big)
        b.consume(1000)
        b.releaseStorage()
        b.prepend([UInt8]([1, 2, 3]), 3)
        XCTAssertEqual(b.readableArray, [1, 2, 3])
        b.clear()
        b.releaseStorage()
        b.appendDecimal(-42)
        b.appendHex(255)
        XCTAssertEqual(b.string(b.readIndex, b.writeIndex), "-42ff")
    }

    func testReleasedBufferCanGrowPastItsInitialCapacity() {
        let b = ByteBuffer(lazyCapacity: 64)
        for i in 0..<10_000 { b.append(UInt8(truncatingIfNeeded: i)) }
        XCTAssertEqual(b.readableBytes, 10_000)
        XCTAssertEqual(b[9_999], UInt8(truncatingIfNeeded: 9_999))
    }
}
