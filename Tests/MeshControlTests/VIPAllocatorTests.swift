import XCTest
import MeshCore
import MeshConfig
@testable import MeshControl
#if canImport(Glibc)
import Glibc
#endif

/// The VIP allocator alone (pure): deterministic start, probing on collision, never the
/// network or broadcast address, never one address for two hosts, and a file that reads back
/// exactly or is refused naming its line.
final class VIPAllocatorTests: XCTestCase {
    /// Two different hosts whose start slots are equal (found by search, as collisions happen).
    func colliding(_ n: Int, where pred: (UInt16) -> Bool = { _ in true }) -> (UInt16, [String]) {
        var seen: [UInt16: [String]] = [:]
        var i = 0
        while true {
            let h = "svc\(i).ns"
            let s = VIPAllocator.startSlot(h)
            if pred(s) {
                seen[s, default: []].append(h)
                if seen[s]!.count == n { return (s, seen[s]!) }
            }
            i += 1
        }
    }

    func testStartIsAHashOfTheHostInsideTheUsableRange() {
        var a = VIPAllocator()
        XCTAssertEqual(a.allocate("reviews.default"), VIPAllocator.startSlot("reviews.default"))
        XCTAssertEqual(VIPAllocator.startSlot("reviews.default"), VIPAllocator.startSlot("reviews.default"))
        XCTAssertNotEqual(VIPAllocator.startSlot("reviews.default"), VIPAllocator.startSlot("ratings.default"))
        for i in 0..<20_000 {
            let s = VIPAllocator.startSlot("h\(i)")
            XCTAssertTrue(s >= 1 && s <= 65_534, "h\(i): \(s)")
        }
        XCTAssertFalse(VIPAllocator.usable(0))
        XCTAssertFalse(VIPAllocator.usable(0xFFFF))
    }

    func testACollisionProbesToTheNextFreeSlotAndNeverSharesOne() {
        let (start, hosts) = colliding(3) { $0 < 65_000 }
        var a = VIPAllocator()
        XCTAssertEqual(a.allocate(hosts[0]), start)
        XCTAssertEqual(a.allocate(hosts[1]), start + 1)
        XCTAssertEqual(a.allocate(hosts[2]), start + 2)
        // Asking again gives the same slot, not a new one.
        XCTAssertEqual(a.allocate(hosts[1]), start + 1)
        XCTAssertEqual(Set(a.slots.values).count, 3)
        XCTAssertEqual(a.owner(of: start + 2), hosts[2])
    }

    func testProbingWrapsPastTheLastSlotToTheFirstNeverToBroadcastOrNetwork() {
        let (start, hosts) = colliding(2) { $0 == 65_534 }
        XCTAssertEqual(start, 65_534)
        var a = VIPAllocator()
        XCTAssertEqual(a.allocate(hosts[0]), 65_534)
        XCTAssertEqual(a.allocate(hosts[1]), 1)   // not 65_535 (.255.255), not 0 (.0.0)
        XCTAssertEqual(VIPAllocator.ipv4(65_534), "240.240.255.254")
        XCTAssertEqual(VIPAllocator.ipv4(1), "240.240.0.1")
    }

    func testReservedSlotsAreSkipped() {
        let h = "cache.default"
        let s = VIPAllocator.startSlot(h)
        var a = VIPAllocator()
        let next: UInt16 = s >= 65_534 ? 1 : s + 1
        XCTAssertEqual(a.allocate(h, reserved: [s]), next)
    }

    func testIPv6IsDerivedFromTheIPv4OneWithTwoHexDigitsPerOctet() {
        XCTAssertEqual(VIPAllocator.ipv6(0x0001), "2001:2::f0f0:0001")
        XCTAssertEqual(VIPAllocator.ipv4(0x0123), "240.240.1.35")
        XCTAssertEqual(VIPAllocator.ipv6(0x0123), "2001:2::f0f0:0123")
        XCTAssertEqual(VIPAllocator.ipv4(0x1203), "240.240.18.3")
        XCTAssertEqual(VIPAllocator.ipv6(0x1203), "2001:2::f0f0:1203")   // Istio's %x%x gives both ...:123
        XCTAssertEqual(VIPAllocator.ipv6(0xfefe), "2001:2::f0f0:fefe")
        XCTAssertNotNil(SocketAddress(host: VIPAllocator.ipv6(0xfefe), port: 1))
        XCTAssertEqual(VIPAllocator.slot(ofIPv4: "240.240.18.3"), 0x1203)
        XCTAssertNil(VIPAllocator.slot(ofIPv4: "240.241.18.3"))
        XCTAssertNil(VIPAllocator.slot(ofIPv4: "240.240.256.3"))
        XCTAssertNil(VIPAllocator.slot(ofIPv4: "240.240.1"))
    }

    func testTheTableReadsBackExactlyAndKeepsEveryHostsSlot() throws {
        let (_, hosts) = colliding(2)
        var a = VIPAllocator()
        for h in hosts + ["reviews.default", "api.example.com"] { _ = a.allocate(h) }
        let text = a.serialized()
        XCTAssertTrue(text.hasPrefix("# meshd: virtual IPs, hosts: 4\n"), text)
        var b = try VIPAllocator.parse(text, file: "vips.txt")
        XCTAssertEqual(b, a)
        // A host allocated after the reload gets a slot no other host holds; the old ones stay.
        _ = b.allocate("ratings.default")
        for h in a.slots.keys { XCTAssertEqual(b.slots[h], a.slots[h]) }
        XCTAssertEqual(Set(b.slots.values).count, 5)
    }

    func testADamagedTableIsRefusedNamingTheLine() {
        func refused(_ text: String, _ expected: String, line: Int = #line) {
            XCTAssertThrowsError(try VIPAllocator.parse(text, file: "vips.txt"), line: UInt(line)) { e in
                XCTAssertTrue("\(e)".hasPrefix(expected), "\(e)", line: UInt(line))
            }
        }
        let h = "# meshd: virtual IPs, hosts: "
        refused("", "vips.txt:1: expected the header line")
        refused("reviews.default\t240.240.0.1\n", "vips.txt:1: expected the header line")
        refused("\(h)2\nreviews.default\t240.240.0.1\n", "vips.txt: the header counts 2 host(s) but 1 were read")
        refused("\(h)1\nreviews.default 240.240.0.1\n", "vips.txt:2: expected HOST<tab>240.240.X.Y")
        refused("\(h)1\nReviews.default\t240.240.0.1\n", "vips.txt:2: expected a host name")
        refused("\(h)1\nreviews.default\t10.0.0.1\n", "vips.txt:2: expected an address in 240.240.0.0/16")
        refused("\(h)1\nreviews.default\t240.240.0.0\n", "vips.txt:2: expected an address in 240.240.0.0/16")
        refused("\(h)1\nreviews.default\t240.240.255.255\n", "vips.txt:2: expected an address in 240.240.0.0/16")
        refused("\(h)2\nreviews.default\t240.240.0.1\nreviews.default\t240.240.0.2\n", "vips.txt:3: reviews.default is listed twice")
        refused("\(h)2\nreviews.default\t240.240.0.1\nratings.default\t240.240.0.1\n", "vips.txt:3: 240.240.0.1 is given to reviews.default and ratings.default")
        XCTAssertEqual(try VIPAllocator.parse("\(h)0\n", file: "vips.txt"), VIPAllocator())
    }
}

/// meshd's store with VIPs: allocated for every mesh host, pushed in the cluster's `addresses`,
/// stable across an unrelated apply, a delete and a restart, and a ServiceEntry's own addresses
/// winning (or refused by name).
final class ConfigStoreVIPTests: XCTestCase {
    var dir = ""
    override func setUp() {
        var t = Array("/tmp/configstore-vip-XXXXXX".utf8CString)
        dir = String(cString: mkdtemp(&t)!)
    }
    override func tearDown() { _ = system("rm -rf '\(dir)'") }

    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n"
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ratings}\nspec:\n  host: ratings\n"
    func entry(_ name: String, _ host: String, _ addresses: String?) -> String {
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: \(name)}\nspec:\n  hosts: [\(host)]\n"
            + (addresses.map { "  addresses: \($0)\n" } ?? "")
            + "  ports: [{number: 80, name: http, protocol: HTTP}]\n  endpoints: [{address: 192.0.2.10}]\n"
    }
    func apply(_ s: ConfigStore, _ text: String, _ file: String = "in.yaml") throws { _ = try s.apply([ConfigStore.Input(file: file, text: text)]) }
    func expected(_ host: String, _ s: ConfigStore) -> String? {
        s.serviceAddresses().first { $0.host == host }.map { "    addresses: [\($0.addresses.map { "\"\($0)\"" }.joined(separator: ", "))]" }
    }

    func testEveryMeshHostGetsAVIPPushedInItsCluster() throws {
        let s = try ConfigStore(stateDir: dir)
        try apply(s, vs + "---\n" + dr + "---\n" + entry("api", "api.example.com", nil))
        try s.register(identity: "spiffe://cluster.local/ns/shop/sa/cart", service: "cart", namespace: "shop", labels: [], address: "127.0.0.1:1")
        let got = Dictionary(uniqueKeysWithValues: s.serviceAddresses().map { ($0.host, $0.addresses) })
        XCTAssertEqual(Set(got.keys), ["reviews.default", "ratings.default", "api.example.com", "cart.shop"])
        for (h, a) in got {
            let slot = VIPAllocator.startSlot(h)
            XCTAssertEqual(a.count, 2, h)
            XCTAssertTrue(a[0].hasPrefix("240.240."), "\(h): \(a)")
            XCTAssertEqual(a[1], VIPAllocator.ipv6(VIPAllocator.slot(ofIPv4: a[0])!))
            _ = slot
        }
        XCTAssertEqual(Set(got.values.map { $0[0] }).count, 4)
        let text = s.proxyConfig().text
        for h in got.keys {
            XCTAssertTrue(text.contains("  - name: \"\(h)\"\n    tls: ") && text.contains(expected(h, s)!), "\(h)\n\(text)")
        }
    }

    func testVIPsAreStableAcrossApplyDeleteAndRestart() throws {
        var s = try ConfigStore(stateDir: dir)
        try apply(s, vs)
        let first = s.serviceAddresses()
        XCTAssertEqual(first.map(\.host), ["reviews.default"])
        try apply(s, dr, "other.yaml")   // unrelated
        XCTAssertEqual(s.serviceAddresses().first { $0.host == "reviews.default" }!.addresses, first[0].addresses)
        _ = try s.apply([ConfigStore.Input(file: "in.yaml", text: vs)], delete: true)
        try apply(s, vs)
        XCTAssertEqual(s.serviceAddresses().first { $0.host == "reviews.default" }!.addresses, first[0].addresses)
        // Two hosts with the same start slot, the one that sorts last applied first: it holds
        // the start slot, the other the next. Only the state file can keep that over a restart.
        var seen: [UInt16: String] = [:]
        var pair: (String, String)? = nil
        for i in 0... {
            let h = "x\(i)"
            let slot = VIPAllocator.startSlot("\(h).default")
            if let o = seen[slot] { pair = (min(o, h), max(o, h)); break }
            seen[slot] = h
        }
        let (low, high) = pair!
        for h in [high, low] {
            try apply(s, dr.replacingOccurrences(of: "ratings", with: h), "\(h).yaml")
        }
        let start = VIPAllocator.startSlot("\(low).default")
        XCTAssertEqual(s.serviceAddresses().first { $0.host == "\(high).default" }!.addresses[0], VIPAllocator.ipv4(start))
        XCTAssertEqual(s.serviceAddresses().first { $0.host == "\(low).default" }!.addresses[0], VIPAllocator.ipv4(start + 1))
        let before = s.serviceAddresses().map { "\($0.host)=\($0.addresses)" }
        s = try ConfigStore(stateDir: dir)
        XCTAssertEqual(s.serviceAddresses().map { "\($0.host)=\($0.addresses)" }, before)
    }

    func testAServiceEntrysAddressesWinAndACIDRIsRefusedByName() throws {
        let s = try ConfigStore(stateDir: dir)
        try apply(s, entry("db", "db.example.com", "[192.0.2.50, \"2001:db8::50\"]"))
        XCTAssertEqual(s.serviceAddresses().map { "\($0.host)=\($0.addresses)" }, ["db.example.com=[\"192.0.2.50\", \"2001:db8::50\"]"])
        XCTAssertTrue(s.proxyConfig().text.contains("    addresses: [\"192.0.2.50\", \"2001:db8::50\"]\n"))
        XCTAssertThrowsError(try apply(s, entry("net", "net.example.com", "[192.0.2.0/24]"), "net.yaml")) { e in
            XCTAssertTrue("\(e)".contains("net.yaml") && "\(e)".contains("spec.addresses[0]") && "\(e)".contains("CIDR"), "\(e)")
        }
        XCTAssertThrowsError(try apply(s, entry("bad", "bad.example.com", "[reviews]"), "bad.yaml")) { e in
            XCTAssertTrue("\(e)".contains("spec.addresses[0]: expected an IPv4 or IPv6 address"), "\(e)")
        }
    }

    func testAnAddressMeshdGaveToAnotherHostCannotBeClaimedByAServiceEntry() throws {
        let s = try ConfigStore(stateDir: dir)
        try apply(s, vs)
        let taken = s.serviceAddresses()[0].addresses[0]
        let v = s.version
        XCTAssertThrowsError(try apply(s, entry("thief", "thief.example.com", "[\(taken)]"), "thief.yaml")) { e in
            XCTAssertTrue("\(e)".contains("thief.yaml") && "\(e)".contains("spec.addresses[0]") && "\(e)".contains("reviews.default"), "\(e)")
        }
        XCTAssertEqual(s.version, v)
        try apply(s, entry("a", "a.example.com", "[192.0.2.60]"))
        XCTAssertThrowsError(try apply(s, entry("b", "b.example.com", "[192.0.2.60]"), "b.yaml")) { e in
            XCTAssertTrue("\(e)".contains("192.0.2.60 is also the address of a.example.com"), "\(e)")
        }
    }

    func testADamagedVIPFileStopsTheStoreNamingIt() throws {
        do {
            let s = try ConfigStore(stateDir: dir)
            try apply(s, vs)
        }
        let p = "\(dir)/vips.txt"
        let f = fopen(p, "w")!
        fputs("# meshd: virtual IPs, hosts: 1\nreviews.default\t240.240.0.0\n", f)
        fclose(f)
        XCTAssertThrowsError(try ConfigStore(stateDir: dir)) { e in
            XCTAssertTrue("\(e)".contains("\(p):2: expected an address in 240.240.0.0/16") && "\(e)".contains("damaged"), "\(e)")
        }
    }

    func testAPushedClusterTakesOnlyIPAddresses() throws {
        let base = "apiVersion: sidecar.mesh/v1alpha1\nkind: ProxyConfig\nspec:\n  clusters:\n  - name: a.default\n    endpoints: []\n    addresses: "
        XCTAssertNoThrow(try Bootstrap.checkPushed(base + "[240.240.1.2, \"2001:2::f0f0:0102\"]\n  routes: []\n", namespace: "default", source: "meshd"))
        for bad in ["[reviews]", "[10.0.0.0/8]", "[\"[::1]\"]", "[\"1.2.3.4:80\"]"] {
            XCTAssertThrowsError(try Bootstrap.checkPushed(base + bad + "\n  routes: []\n", namespace: "default", source: "meshd"), bad) { e in
                XCTAssertTrue("\(e)".contains("spec.clusters[0].addresses[0]: expected an IPv4 or IPv6 address"), "\(e)")
            }
        }
    }
}
