import COpenSSL
import CMeshShims
#if canImport(Glibc)
import Glibc
#endif

/// Checks a workload's own certificate the way its peers will: the leaf plus the intermediates
/// of its chain file must chain to its own trust bundle and be within their validity period at
/// `now` (OpenSSL's X509_verify_cert). A sidecar runs it before it says `config ok` or starts, so
/// it never serves with a certificate that every peer refuses. Runs once per load, never per
/// connection.
public enum CertificateCheck {
    /// Throws a one-line reason naming `chainFile` (and `bundleFile` when the chain does not reach
    /// it): "expired at DATE", "not yet valid (valid from DATE)", or "does not chain to the trust
    /// bundle FILE: REASON". The PEM texts are what those files hold (or meshd issued).
    public static func verify(chainPEM: String, chainFile: String, bundlePEM: String, bundleFile: String,
                              now: Int64) throws(TLSConfigError) {
        let chain = TLSContext.certificates(pem: chainPEM)
        let roots = TLSContext.certificates(pem: bundlePEM)
        defer { for c in chain + roots { X509_free(c) } }
        guard let leaf = chain.first else { throw TLSConfigError("\(chainFile): no PEM certificate found") }
        guard !roots.isEmpty else { throw TLSConfigError("trust bundle \(bundleFile): no PEM certificate found") }
        // The workload's own period first: it is what an operator renews.
        let own = X509Info.info(leaf)
        if now > own.notAfter { throw TLSConfigError("certificate \(chainFile) expired at \(X509Info.rfc3339(own.notAfter))") }
        if now < own.notBefore {
            throw TLSConfigError("certificate \(chainFile) is not yet valid (valid from \(X509Info.rfc3339(own.notBefore)))")
        }
        guard let f = chainFailure(chain, roots: roots, now: now) else { return }
        if let setup = f.setupError { throw TLSConfigError("cannot check \(chainFile): \(setup)") }
        let (code, failing) = (f.code, f.failing)
        // Which certificate: the workload's own, or one above it in the chain.
        let which = f.depth == 0 || failing == nil ? "certificate \(chainFile)"
            : "certificate \(chainFile): the chain's \(failing!.subject)"
        switch code {
        case X509_V_ERR_CERT_HAS_EXPIRED:
            let notAfter = failing?.notAfter ?? 0
            throw TLSConfigError("\(which) expired at \(X509Info.rfc3339(notAfter))")
        case X509_V_ERR_CERT_NOT_YET_VALID:
            let notBefore = failing?.notBefore ?? 0
            throw TLSConfigError("\(which) is not yet valid (valid from \(X509Info.rfc3339(notBefore)))")
        default:
            throw TLSConfigError("certificate \(chainFile) does not chain to the trust bundle \(bundleFile): \(f.reason)")
        }
    }

    /// Why a chain does not verify: OpenSSL's error code and reason, the depth and the
    /// certificate it failed at, or a set-up error (out of memory, a certificate refused).
    public struct Failure: Sendable {
        public var code: Int32
        public var reason: String
        public var depth: Int32
        public var failing: CertificateInfo?
        public var setupError: String?
    }

    /// The one verification both the sidecar and meshd run: the first certificate of `chain`,
    /// with the rest as intermediates, up to one of `roots` (at `now`, or the current time when
    /// nil); nil when it verifies.
    public static func chainFailure(_ chain: [OpaquePointer], roots: [OpaquePointer], now: Int64?) -> Failure? {
        guard let leaf = chain.first else { return Failure(code: 0, reason: "no certificate to verify", depth: 0) }
        guard !roots.isEmpty else { return Failure(code: 0, reason: "no root certificate", depth: 0) }
        guard let store = X509_STORE_new(), let ctx = X509_STORE_CTX_new(), let untrusted = mesh_sk_X509_new() else {
            return Failure(code: 0, reason: "out of memory", depth: 0, setupError: "out of memory")
        }
        defer { X509_STORE_CTX_free(ctx); X509_STORE_free(store); mesh_sk_X509_free(untrusted) }
        for r in roots where X509_STORE_add_cert(store, r) != 1 {
            let e = "cannot add a root certificate: \(OpenSSLErrors.drain())"
            return Failure(code: 0, reason: e, depth: 0, setupError: e)
        }
        for c in chain.dropFirst() { _ = mesh_sk_X509_push(untrusted, c) }
        guard X509_STORE_CTX_init(ctx, store, leaf, untrusted) == 1 else {
            let e = OpenSSLErrors.drain()
            return Failure(code: 0, reason: "verification setup failed: \(e)", depth: 0, setupError: e)
        }
        if let t = now { X509_STORE_CTX_set_time(ctx, 0, time_t(t)) }
        let ok = X509_verify_cert(ctx) == 1
        ERR_clear_error()
        if ok { return nil }
        let code = X509_STORE_CTX_get_error(ctx)
        return Failure(code: code,
                       reason: X509_verify_cert_error_string(Int(code)).map { String(cString: $0) } ?? "error \(code)",
                       depth: X509_STORE_CTX_get_error_depth(ctx),
                       failing: X509_STORE_CTX_get_current_cert(ctx).map { X509Info.info($0) })
    }
}
