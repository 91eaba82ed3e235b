#if canImport(Glibc)
import Glibc
#endif
import MeshCore

extension Socket {
    /// The address of a connected socket's peer (`getpeername`), nil when it has none.
    public static func peerEndpoint(_ fd: Int32) -> IPEndpoint? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
        }
        return rc == 0 ? IPEndpoint(storage: ss) : nil
    }
}
