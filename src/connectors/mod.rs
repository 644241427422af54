//! Connectors: what feeds a source's tables (`CREATE SOURCE … FROM <connector>`). A connector
//! makes the rows of any range of its stream's positions; the engine's source tasks
//! (`engine/sources.rs`) pace, commit and resume them.

pub mod nexmark;
