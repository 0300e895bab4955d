//! The namespace lab (work in progress).
