//! The BigV brain (control plane). Work in progress.
