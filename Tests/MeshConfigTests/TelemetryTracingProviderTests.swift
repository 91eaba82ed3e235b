import XCTest
@testable import MeshConfig

/// `tracing[].providers[].name`: this mesh's one tracing provider (the OTLP collector, `otel` or
/// `opentelemetry`) is accepted; any other name is refused naming the field and the line.
final class TelemetryTracingProviderTests: XCTestCase {
    private func parse(_ providers: String) throws(ConfigError) -> IstioTraffic.Config {
        try IstioTraffic.parse("""
            apiVersion: telemetry.istio.io/v1
            kind: Telemetry
            metadata: {name: t, namespace: default}
            spec:
              tracing:
              - providers: \(providers)
            """, file: "t.yaml")
    }

    func testUnknownProviderRefusedByName() {
        XCTAssertThrowsError(try parse("[{name: otel}, {name: zipkin}]")) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains("spec.tracing[0].providers[1].name"), s)
            XCTAssertTrue(s.contains("unknown tracing provider \"zipkin\""), s)
            XCTAssertTrue(s.contains("t.yaml"), s)
        }
        XCTAssertThrowsError(try parse("[{name: envoy}]")) { e in XCTAssertTrue("\(e)".contains("providers[0].name"), "\(e)") }
    }

    func testTheCollectorsNamesAccepted() throws {
        XCTAssertEqual(try parse("[{name: otel}]").telemetries.first?.tracing?.providers, ["otel"])
        XCTAssertEqual(try parse("[{name: opentelemetry}]").telemetries.first?.tracing?.providers, ["opentelemetry"])
    }
}
