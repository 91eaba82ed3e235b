import XCTest
import MeshCore
@testable import MeshConfig

/// Inputs found with the fuzz targets (fuzz/, scripts/fuzz.sh), kept as regression tests.
final class FuzzRegressionTests: XCTestCase {
    func virtualService(regex: String) -> String {
        """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: r}
        spec:
          hosts: [r]
          http:
          - match:
            - uri: {regex: "\(regex)"}
            route:
            - destination: {host: r}
        """
    }

    /// FuzzConfig: `((((a{1,255}){1,255}){1,255}){1,255})` in a VirtualService made glibc's
    /// regcomp copy the group billions of times: out of memory in meshd (on `meshctl apply`) and
    /// in sidecars. Patterns over RE2's limits (Istio's) are refused before compiling. The
    /// patterns here are small enough to compile without the check, so the test fails (instead
    /// of running out of memory) where the check is missing.
    func testRegexOverRE2LimitsIsRefused() {
        let refused = ["(a{1,100}){1,100}", "((a{1,10}){1,10}){1,11}", "a{1001}", "a{1,1001}", "(ab){2000,}",
                       String(repeating: "[a-z]{1,1000}", count: 6)]
        for p in refused {
            XCTAssertThrowsError(try IstioTraffic.parse(virtualService(regex: p), file: "vs.yaml"), p) {
                XCTAssertTrue("\($0)".contains("too large"), "\($0)")
            }
        }
    }

    /// FuzzConfig (5-minute run): `/v` followed by ~130 `+` (from the `/v[0-9]+/.*` seed) ran
    /// out of memory: glibc nests each `+` over the previous one, doubling the copies each time.
    /// Sixteen are enough to show it (2^16 copies) and still compile without the check.
    func testRegexWithStackedPlusesIsRefused() {
        let p = "/v" + String(repeating: "+", count: 16) + "[0-9]+/.*"
        XCTAssertThrowsError(try IstioTraffic.parse(virtualService(regex: p), file: "vs.yaml"), p) {
            XCTAssertTrue("\($0)".contains("too large"), "\($0)")
        }
        XCTAssertNotNil(RegexLimits.violation("/v" + String(repeating: "+", count: 130) + "[0-9]+/.*"))
    }

    func testRegexWithinRE2LimitsIsAccepted() throws {
        let accepted = ["/api/v[0-9]{1,3}/.*", "\\\\d{3}-\\\\d{4}", "[a-z]{1,1000}", "(a{2}){500}", "((ab|c){1,10}){1,100}",
                        "[]{}]{2}", "a{,5}", "(a|b)+c*d?", String(repeating: "[a-z]{1,1000}", count: 4)]
        for p in accepted {
            XCTAssertNoThrow(try IstioTraffic.parse(virtualService(regex: p), file: "vs.yaml"), p)
        }
    }

    func testRegexLimitsScan() {
        XCTAssertNil(RegexLimits.violation("((a{1,10}){1,10}){1,10}"))
        XCTAssertNotNil(RegexLimits.violation("((((a{1,255}){1,255}){1,255}){1,255})"))
        XCTAssertNotNil(RegexLimits.violation("(a{1,1000}){1,1000}"))
        XCTAssertNil(RegexLimits.violation("[[:alpha:]{]{1,1000}"))        // a bracket holding '{'
        XCTAssertNotNil(RegexLimits.violation("(x{99999999999999999999})"))  // long digit strings clamp
        XCTAssertNil(RegexLimits.violation("\\{1,5000\\}"))                  // escaped braces are literals
    }
}
