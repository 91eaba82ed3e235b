import XCTest
@testable import MeshConfig

/// DestinationRule `trafficPolicy.loadBalancer`: consistentHash, localityLbSetting, warm-up.
final class IstioLoadBalancerTests: XCTestCase {
    /// A DestinationRule whose top-level loadBalancer is `lb` (lines 8 on, indented by 6), with
    /// outlier detection unless `outlier` is false.
    func rule(_ lb: String, outlier: Bool = true) -> String {
        """
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: reviews}
        spec:
          host: reviews
          trafficPolicy:
            loadBalancer:
        \(lb.split(separator: "\n").map { "      " + $0 }.joined(separator: "\n"))
        \(outlier ? "    outlierDetection: {consecutive5xxErrors: 2}" : "")
          subsets:
          - name: v1
            labels: {version: v1}
        """
    }

    func refusal(_ text: String) -> String? {
        do { _ = try IstioTraffic.parse(text, file: "lb.yaml"); return nil } catch { return error.description }
    }

    func policy(_ lb: String, outlier: Bool = true) throws -> IstioTraffic.TrafficPolicy {
        try XCTUnwrap(IstioTraffic.parse(rule(lb, outlier: outlier), file: "lb.yaml").destinationRules[0].trafficPolicy)
    }

    func testBadConsistentHashSettingsAreRefusedNamingFieldAndLine() {
        let p = "lb.yaml:8: document 1: spec.trafficPolicy.loadBalancer"
        let cases: [(String, String)] = [
            ("consistentHash: {}", "\(p).consistentHash: needs one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName"),
            ("consistentHash: {httpHeaderName: x-user, useSourceIp: true}",
             "\(p).consistentHash: only one of httpHeaderName, useSourceIp (Istio's hash_key is one of them)"),
            ("simple: RANDOM\nconsistentHash: {httpHeaderName: x-user}",
             "lb.yaml:9: document 1: spec.trafficPolicy.loadBalancer.consistentHash: only one of simple or consistentHash (Istio's lb_policy is one of them)"),
            ("consistentHash: {httpCookie: {name: user}}",
             "\(p).consistentHash.httpCookie.ttl: required field is missing (Istio requires a ttl; 0s makes a session cookie)"),
            ("consistentHash: {httpCookie: {ttl: 10s}}", "\(p).consistentHash.httpCookie.name: required field is missing"),
            ("consistentHash: {httpCookie: {name: \"a;b\", ttl: 10s}}",
             "\(p).consistentHash.httpCookie.name: expected a cookie name (no spaces, '=', ';' or ','), got \"a;b\""),
            ("consistentHash: {httpCookie: {name: u, ttl: 10s, path: nope}}",
             "\(p).consistentHash.httpCookie.path: expected a path starting with / (no spaces or ';'), got \"nope\""),
            ("consistentHash: {httpCookie: {name: u, ttl: 10s, attributes: [{name: SameSite, value: Strict}]}}",
             "\(p).consistentHash.httpCookie.attributes: not supported yet"),
            ("consistentHash: {useSourceIp: false}", "\(p).consistentHash.useSourceIp: only true is meaningful (it chooses the hash key)"),
            ("consistentHash: {httpHeaderName: \"a b\"}", "\(p).consistentHash.httpHeaderName: expected a header name, got \"a b\""),
            ("consistentHash: {httpQueryParameterName: \"a&b\"}", "\(p).consistentHash.httpQueryParameterName: expected a query parameter name, got \"a&b\""),
            ("consistentHash: {useSourceIp: true, maglev: {tableSize: 65536}}",
             "\(p).consistentHash.maglev.tableSize: must be a prime number for maglev (e.g. 65537), got 65536"),
            ("consistentHash: {useSourceIp: true, maglev: {}}",
             "\(p).consistentHash.maglev.tableSize: required field is missing (a prime such as 65537)"),
            ("consistentHash: {useSourceIp: true, ringHash: {}, maglev: {tableSize: 7}}", "\(p).consistentHash.maglev: only one of ringHash or maglev"),
            ("consistentHash: {useSourceIp: true, minimumRingSize: 64, ringHash: {minimumRingSize: 64}}",
             "\(p).consistentHash.minimumRingSize: only one of minimumRingSize or ringHash/maglev (minimumRingSize is the deprecated spelling of ringHash.minimumRingSize)"),
            ("consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 0}}",
             "\(p).consistentHash.ringHash.minimumRingSize: must be between 1 and 8388608, got 0"),
            ("consistentHash: {useSourceIp: true, ringHash: {maximumRingSize: 10}}",
             "\(p).consistentHash.ringHash.maximumRingSize: unknown field (known fields here: minimumRingSize)"),
        ]
        for (lb, want) in cases { XCTAssertEqual(refusal(rule(lb)), want, lb) }
    }

    func testBadLocalityAndWarmupSettingsAreRefusedNamingFieldAndLine() {
        let p = "lb.yaml:8: document 1: spec.trafficPolicy.loadBalancer"
        let cases: [(String, String, Bool)] = [
            ("localityLbSetting: {distribute: [{from: a/*, to: {\"a/*\": 60, b: 30}}]}", "\(p).localityLbSetting.distribute[0].to: weights must sum to 100, they sum to 90", true),
            ("localityLbSetting: {distribute: [{from: \"a/*/z\", to: {a: 100}}]}",
             "\(p).localityLbSetting.distribute[0].from: expected a locality region/zone/subzone (a '*' only as the whole last part), got \"a/*/z\"", true),
            ("localityLbSetting: {distribute: [{from: a, to: {\"a/z*\": 100}}]}",
             "\(p).localityLbSetting.distribute[0].to.a/z*: expected a locality region/zone/subzone (a '*' only as the whole last part), got \"a/z*\"", true),
            ("localityLbSetting: {distribute: [{from: a, to: {a: 101}}]}",
             "\(p).localityLbSetting.distribute[0].to.a: expected a percentage from 0 to 100, got the value \"101\"", true),
            ("localityLbSetting: {distribute: [{from: a, to: {a: 100}}, {from: a, to: {b: 100}}]}",
             "\(p).localityLbSetting.distribute[1].from: locality \"a\" is listed twice", true),
            ("localityLbSetting: {distribute: [{from: a, to: {}}]}",
             "\(p).localityLbSetting.distribute[0].to: expected a mapping of localities to percentages (summing to 100)", true),
            ("localityLbSetting: {distribute: [{from: a, to: {a: 100}}], failover: [{from: a, to: b}]}",
             "\(p).localityLbSetting.distribute: can not simultaneously set 'distribute' and 'failover' (Istio)", true),
            ("localityLbSetting: {distribute: [{from: a, to: {a: 100}}], failoverPriority: [topology.kubernetes.io/zone]}",
             "\(p).localityLbSetting.failoverPriority: failoverPriority together with distribute: not supported yet", true),
            ("localityLbSetting: {failover: [{from: a, to: a}]}",
             "\(p).localityLbSetting.failover[0].to: locality lb failover settings must specify different regions (both are \"a\")", true),
            ("localityLbSetting: {failover: [{from: a/z1, to: b}]}",
             "\(p).localityLbSetting.failover[0].from: expected a region (a locality's first part, no '/' or '*'), got \"a/z1\"", true),
            ("localityLbSetting: {failover: [{from: a}]}", "\(p).localityLbSetting.failover[0].to: required field is missing", true),
            ("localityLbSetting: {failoverPriority: [\"topology.kubernetes.io/zone=a\"]}",
             "\(p).localityLbSetting.failoverPriority[0]: key=value overrides: not supported yet", true),
            ("localityLbSetting: {failoverPriority: [\"bad key!\"]}",
             "\(p).localityLbSetting.failoverPriority[0]: expected a label key such as topology.kubernetes.io/zone, got \"bad key!\"", true),
            ("localityLbSetting: {failover: [{from: a, to: b}], failoverPriority: [topology.kubernetes.io/zone]}",
             "\(p).localityLbSetting.failoverPriority: failoverPriority together with failover: not supported yet", true),
            ("localityLbSetting: {failover: [{from: a, to: b}]}",
             "lb.yaml:8: document 1: spec.trafficPolicy.loadBalancer.localityLbSetting.failover: needs spec.trafficPolicy.outlierDetection (Istio fails over only from ejected endpoints; without it traffic never moves)", false),
            ("warmupDurationSecs: 0s", "\(p).warmupDurationSecs: must be greater than zero", true),
            ("warmupDurationSecs: 10s\nwarmup: {duration: 10s}", "lb.yaml:9: document 1: spec.trafficPolicy.loadBalancer.warmup: only one of warmupDurationSecs or warmup", true),
            ("warmup: {minimumPercent: 5}", "\(p).warmup.duration: required field is missing", true),
            ("warmup: {duration: 10s, aggression: 0.5}", "\(p).warmup.aggression: must be between 1.0 and 100.0, got 0.5", true),
            ("warmup: {duration: 10s, minimumPercent: 101}", "\(p).warmup.minimumPercent: must be between 0.0 and 100.0, got 101", true),
            ("simple: RANDOM\nwarmupDurationSecs: 10s", "\(p).warmupDurationSecs: warm-up applies to ROUND_ROBIN and LEAST_REQUEST only, not to RANDOM", true),
            ("consistentHash: {useSourceIp: true}\nwarmupDurationSecs: 10s",
             "\(p).warmupDurationSecs: warm-up applies to ROUND_ROBIN and LEAST_REQUEST only, not to consistentHash", true),
        ]
        for (lb, want, outlier) in cases { XCTAssertEqual(refusal(rule(lb, outlier: outlier)), want, lb) }
    }

    func testHonouredSettingsAndIstioDefaults() throws {
        var p = try policy("consistentHash: {httpCookie: {name: user, path: /, ttl: 0s}}")
        XCTAssertEqual(p.consistentHash, .init(key: .cookie(name: "user", path: "/", ttl: 0), algorithm: .ringHash(minimumRingSize: 1024)))
        p = try policy("consistentHash: {httpHeaderName: X-User, minimumRingSize: 64}")
        XCTAssertEqual(p.consistentHash, .init(key: .header("x-user"), algorithm: .ringHash(minimumRingSize: 64)))
        p = try policy("consistentHash: {httpQueryParameterName: u, maglev: {tableSize: 65537}}")
        XCTAssertEqual(p.consistentHash, .init(key: .queryParameter("u"), algorithm: .maglev(tableSize: 65537)))
        p = try policy("consistentHash: {useSourceIp: true, ringHash: {}}")
        XCTAssertEqual(p.consistentHash, .init(key: .sourceIP, algorithm: .ringHash(minimumRingSize: 1024)))
        p = try policy("localityLbSetting: {enabled: true, failover: [{from: us, to: eu}]}")
        XCTAssertEqual(p.localityLbSetting?.failover.map { "\($0.from)>\($0.to)" }, ["us>eu"])
        p = try policy("localityLbSetting: {distribute: [{from: \"us/*\", to: {\"us/us-a/*\": 80, \"eu\": 20}}]}", outlier: false)
        XCTAssertEqual(p.localityLbSetting?.distribute.map { "\($0.from)>" + $0.to.map { "\($0.locality)=\($0.weight)" }.joined(separator: ",") },
                       ["us/*>us/us-a/*=80,eu=20"])
        p = try policy("localityLbSetting: {enabled: false, failover: [{from: us, to: eu}]}", outlier: false)
        XCTAssertEqual(p.localityLbSetting?.enabled, false)
        p = try policy("simple: LEAST_REQUEST\nwarmupDurationSecs: 30s")
        XCTAssertEqual(p.warmup, .init(duration: 30_000_000_000, minimumPercent: 10, aggression: 1))
        p = try policy("warmup: {duration: 1m, minimumPercent: 25, aggression: 2}")
        XCTAssertEqual(p.warmup, .init(duration: 60_000_000_000, minimumPercent: 25, aggression: 2))
        // A subset may choose its own consistent hash.
        let sub = rule("simple: ROUND_ROBIN").replacingOccurrences(of: "labels: {version: v1}",
                                                                  with: "labels: {version: v1}\n    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-u}}}")
        let dr = try IstioTraffic.parse(sub, file: "lb.yaml").destinationRules[0]
        XCTAssertEqual(dr.subsets[0].trafficPolicy?.consistentHash?.key, .header("x-u"))
        XCTAssertTrue(IstioTraffic.isPrime(65537) && IstioTraffic.isPrime(7) && !IstioTraffic.isPrime(65535) && !IstioTraffic.isPrime(1))
    }
}
