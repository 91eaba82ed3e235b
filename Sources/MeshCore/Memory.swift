import CMeshShims

/// Process memory housekeeping that is not tied to one object.
public enum Memory {
    /// Hands free heap pages back to the system (glibc keeps freed chunks resident otherwise).
    /// Costs a walk over the free lists: call it after bursts of releases, never per request.
    public static func trim() { _ = mesh_malloc_trim() }
}
