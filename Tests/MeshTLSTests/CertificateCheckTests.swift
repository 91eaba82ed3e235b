import Foundation
import XCTest
@testable import MeshTLS

/// `CertificateCheck`: a workload's own certificate is refused before it is served when a peer
/// would refuse it (expired, not yet valid, not chaining to its own trust bundle), with a reason
/// naming the files. Certificates from certs/make-pki.sh, made at run time.
final class CertificateCheckTests: XCTestCase {
    private var pki: String { TLSSessionTests.pki }
    private func text(_ path: String) throws -> String { try String(contentsOfFile: path, encoding: .utf8) }
    private var now: Int64 { Int64(Date().timeIntervalSince1970) }

    /// The check's error text for `chain` against `bundle` at `now` (nil: accepted).
    private func refusal(_ chain: String, _ bundle: String, at now: Int64) throws -> String? {
        let chainPEM = try text(chain), bundlePEM = try text(bundle)
        do {
            try CertificateCheck.verify(chainPEM: chainPEM, chainFile: chain, bundlePEM: bundlePEM, bundleFile: bundle, now: now)
            return nil
        } catch {
            return error.description
        }
    }

    func testAValidChainIsAccepted() throws {
        XCTAssertNil(try refusal("\(pki)/client/cert-chain.pem", "\(pki)/root-cert.pem", at: now))
    }

    func testAnExpiredCertificateIsRefusedWithItsEndDate() throws {
        let chain = "\(pki)/expired/client/cert-chain.pem"
        let notAfter = X509Info.load(pemFile: chain)[0].notAfter
        XCTAssertLessThan(notAfter, now)
        XCTAssertEqual(try refusal(chain, "\(pki)/root-cert.pem", at: now),
                       "certificate \(chain) expired at \(X509Info.rfc3339(notAfter))")
    }

    func testACertificateBeforeItsStartIsRefusedAsNotYetValid() throws {
        let chain = "\(pki)/client/cert-chain.pem"
        let notBefore = X509Info.load(pemFile: chain)[0].notBefore
        XCTAssertEqual(try refusal(chain, "\(pki)/root-cert.pem", at: notBefore - 3600),
                       "certificate \(chain) is not yet valid (valid from \(X509Info.rfc3339(notBefore)))")
    }

    func testACertificateFromAnotherCAIsRefusedNamingTheBundle() throws {
        let chain = "\(pki)/foreign/client/cert-chain.pem"
        XCTAssertEqual(try refusal(chain, "\(pki)/root-cert.pem", at: now),
                       "certificate \(chain) does not chain to the trust bundle \(pki)/root-cert.pem: unable to get local issuer certificate")
        // The same certificate with its own root as the bundle is fine.
        XCTAssertNil(try refusal(chain, "\(pki)/foreign/root-cert.pem", at: now))
    }

    func testALeafWithoutItsIntermediateDoesNotChain() throws {
        let leaf = "\(pki)/client/cert.pem"
        XCTAssertEqual(try refusal(leaf, "\(pki)/root-cert.pem", at: now),
                       "certificate \(leaf) does not chain to the trust bundle \(pki)/root-cert.pem: unable to get local issuer certificate")
    }

    func testAFileWithoutACertificateIsNamed() throws {
        let key = "\(pki)/client/key.pem"
        XCTAssertEqual(try refusal(key, "\(pki)/root-cert.pem", at: now), "\(key): no PEM certificate found")
    }
}
