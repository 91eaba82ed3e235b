/// Reading and writing YAML 1.1 streams with libyaml, keeping what a manifest transform must give
/// back as it was: key order, scalar styles, tags, anchors and aliases, and each document's exact text.
public enum YAML {
    /// Collections nested deeper than this are refused (parse) or not written (emit).
    public static let maxDepth = 256
    /// More nodes than this in one stream (scalars, collections and aliases) are refused. Aliases
    /// are never expanded, so memory grows with the text: a million nodes is a manifest of about
    /// 20 MB (a 500-workload List is about 100,000 nodes before injection, 180,000 after).
    public static let maxNodes = 1_000_000

    /// Parses a whole stream. Segments: the concatenation of every document's `source`, in order, plus
    /// `trailer` gives back the input byte for byte (comments and blank lines included). A document's source
    /// starts where the previous one ended (so comments between documents belong to the next one) and ends after
    /// its last byte (its `...` when present; for an implicit end, at the next `---` or the end of input).
    /// Aliases are kept as aliases (never expanded); an alias to an anchor not defined before it in its
    /// document, nesting deeper than `maxDepth` and more than `maxNodes` nodes are errors.
    public static func parse(_ text: String) throws(YAMLError) -> (documents: [YAMLDocument], trailer: String) {
        let reader = YAMLStreamReader(text)
        return try reader.read()
    }

    /// One document written back with libyaml's emitter: indentation 2, unlimited line width (never folds a
    /// long value), unicode kept, key order kept, every node's style/tag/anchor/alias as it has them
    /// (libyaml may still choose another scalar style only where the original cannot represent the value);
    /// `---` when explicitStart (always when `forceStart`, and for an empty document), `...` when explicitEnd.
    /// Ends with "\n". Comments are not written (libyaml's events carry none): pass an untouched
    /// document's `source` through instead. Where libyaml cannot write what the tree holds: the
    /// non-specific tag `!` is written `!!str` on a scalar and left out on a collection; an untagged empty
    /// plain scalar in a flow collection or as a key is written `null` (libyaml would write `''`, a
    /// string); `%YAML`/`%TAG` directives are not written (tags come out in full, `!<...>`); a plain
    /// scalar libyaml will not write plain in its place (a tab, a `:` inside a flow collection) is quoted;
    /// a key over 128 characters is written as an explicit `? ` key; an empty block collection as `[]`/`{}`.
    public static func emit(_ document: YAMLDocument, forceStart: Bool = false) throws(YAMLError) -> String {
        let writer = YAMLStreamWriter(document: document.index)
        return try writer.write(document, forceStart: forceStart)
    }
}
