import CNghttp2

/// nghttp2's own checks of received fields (RFC 9113 §8.2.1, §8.3.1), which it applies to every
/// header block before the proxy sees it; named here so tests and the fuzz target can state what
/// the header policy may rely on.
public enum HTTP2FieldRules {
    public static func name(_ p: UnsafePointer<UInt8>, _ n: Int) -> Bool { nghttp2_check_header_name(p, n) != 0 }
    public static func value(_ p: UnsafePointer<UInt8>, _ n: Int) -> Bool { nghttp2_check_header_value_rfc9113(p, n) != 0 }
    public static func method(_ p: UnsafePointer<UInt8>, _ n: Int) -> Bool { nghttp2_check_method(p, n) != 0 }
    public static func path(_ p: UnsafePointer<UInt8>, _ n: Int) -> Bool { nghttp2_check_path(p, n) != 0 }
    public static func authority(_ p: UnsafePointer<UInt8>, _ n: Int) -> Bool { nghttp2_check_authority(p, n) != 0 }
}
