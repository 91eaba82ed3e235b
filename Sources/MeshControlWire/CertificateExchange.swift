/// The certificate request between a sidecar and meshd's API port (DESIGN §4): a CSR posted to
/// `path` with a join token (or, to renew, over mTLS with the current certificate); the answer
/// is the issued chain, `bundleMarker`, then the trust bundle.
public enum CertificateExchange {
    public static let path = "/v1/certificate"
    public static let bundleMarker = "# trust bundle\n"
}
