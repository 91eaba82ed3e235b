/// The shapes of names the mesh accepts from the outside (Kubernetes' rules): service and
/// namespace names are DNS labels; label keys are an optional DNS-subdomain prefix and a name of
/// letters, digits, `-`, `_`, `.`; label values the same, up to 63 characters. Anything else is
/// refused where it enters (flags, registration), so it can never reach generated config.
public enum Names {
    public static func isDNSLabel(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 63 && s.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 }
            && s.first != "-" && s.last != "-"
    }

    static func isLabelName(_ s: Substring, allowEmpty: Bool) -> Bool {
        if s.isEmpty { return allowEmpty }
        return s.utf8.count <= 63 && s.utf8.allSatisfy {
            ($0 >= 97 && $0 <= 122) || ($0 >= 65 && $0 <= 90) || ($0 >= 48 && $0 <= 57) || $0 == 45 || $0 == 95 || $0 == 46
        }
    }

    public static func isLabelKey(_ s: String) -> Bool {
        let parts = s.split(separator: "/", omittingEmptySubsequences: false)
        if parts.count == 2 {
            return !parts[0].isEmpty && parts[0].utf8.count <= 253 && parts[0].utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 || $0 == 46 }
                && isLabelName(parts[1], allowEmpty: false)
        }
        return parts.count == 1 && isLabelName(parts[0], allowEmpty: false)
    }

    public static func isLabelValue(_ s: String) -> Bool { isLabelName(Substring(s), allowEmpty: true) }

    /// A Kubernetes object name (DNS-1123 subdomain): lowercase letters, digits, '-' and '.',
    /// starting and ending with a letter or digit, at most 253 characters.
    public static func isObjectName(_ s: String) -> Bool {
        guard !s.isEmpty, s.utf8.count <= 253, let f = s.utf8.first, let l = s.utf8.last else { return false }
        let alnum = { (c: UInt8) in (c >= 97 && c <= 122) || (c >= 48 && c <= 57) }
        return alnum(f) && alnum(l) && s.utf8.allSatisfy { alnum($0) || $0 == 45 || $0 == 46 }
    }

    /// A host as Istio's `hosts`/`host` fields take it: a lowercase DNS name (letters, digits, '-',
    /// '.', '_'), optionally a wildcard `*` or `*.` prefix where `wildcard` allows it.
    public static func isHost(_ s: String, wildcard: Bool) -> Bool {
        var rest = Substring(s)
        if wildcard && rest == "*" { return true }
        if wildcard && rest.hasPrefix("*.") { rest = rest.dropFirst(2) }
        guard !rest.isEmpty, rest.utf8.count <= 253, !rest.hasPrefix("."), !rest.hasSuffix("."), !rest.contains("..") else { return false }
        // Lowercase only: hosts are compared and turned into cluster names as written.
        return rest.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 || $0 == 46 || $0 == 95 }
    }
}
