//! Node role state of a tandem site (work in progress).
